#!/usr/bin/env bash
# Evaluate a MeQSum checkpoint with fairseq-generate --scoring rouge, as BiomedGPT's
# scripts/text_sum/evaluate_meqsum.sh (beam 5, lenpen 0.7, max_len_b 128, no_repeat_ngram_size 3).
#
# Usage: scripts/evaluate/meqsum.sh [--dry-run] [--] [fairseq-generate flags, appended last]
#
# Data in DATA_DIR (default data/meqsum): test.tsv (--selected-cols 0,1). CHECKPOINT defaults to
# $SAVE_DIR/checkpoint_best.pt of the fine-tuning run. The score line gives ROUGE-1/2/L F1 (no separate
# eval_rouge.py step).
# Variables: DATA_DIR DATA CHECKPOINT SAVE_DIR ARCH BATCH_SIZE BEAM LENPEN MAX_LEN_B RESULTS_DIR, plus those of
# scripts/lib.sh (NGPUS, PRECISION, PYTHON, DRY_RUN, ...).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
parse_args "$@"

DATA_DIR="${DATA_DIR:-$ROOT/data/meqsum}"
DATA="${DATA:-$DATA_DIR/test.tsv}"
ARCH="${ARCH:-ofa_tiny}"
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/finetune/meqsum/$ARCH}"
CHECKPOINT="${CHECKPOINT:-$SAVE_DIR/checkpoint_best.pt}"
BATCH_SIZE="${BATCH_SIZE:-32}"
BEAM="${BEAM:-5}"
LENPEN="${LENPEN:-0.7}"
MAX_LEN_B="${MAX_LEN_B:-128}"

generate "$DATA" '"selected_cols": "0,1"' --task gigaword --scoring rouge \
    --beam "$BEAM" --lenpen "$LENPEN" --max-len-a 0 --max-len-b "$MAX_LEN_B" --no-repeat-ngram-size 3
