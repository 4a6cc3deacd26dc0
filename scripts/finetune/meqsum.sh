#!/usr/bin/env bash
# Fine-tune on MeQSum question summarisation (task gigaword), as BiomedGPT's scripts/text_sum/train_meqsum.sh.
#
# Usage: scripts/finetune/meqsum.sh [--dry-run] [--] [fairseq-train flags, appended last]
#
# Data in DATA_DIR (default data/meqsum): train.tsv and val.tsv with the columns source, target
# (--selected-cols 0,1; BiomedGPT ships them in datasets/finetuning/MeQSum).
# Variables: DATA_DIR DATA SAVE_DIR RESTORE ARCH BATCH_SIZE UPDATE_FREQ LR MAX_EPOCH WARMUP_RATIO,
# plus those of scripts/lib.sh (NGPUS, PRECISION, PYTHON, DRY_RUN, ...).
# Evaluate the result with scripts/evaluate/meqsum.sh (same DATA_DIR, SAVE_DIR and ARCH).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
parse_args "$@"

DATA_DIR="${DATA_DIR:-$ROOT/data/meqsum}"
DATA="${DATA:-$DATA_DIR/train.tsv,$DATA_DIR/val.tsv}"
ARCH="${ARCH:-ofa_tiny}"
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/finetune/meqsum/$ARCH}"
BATCH_SIZE="${BATCH_SIZE:-8}"  # per GPU
UPDATE_FREQ="${UPDATE_FREQ:-4}"
LR="${LR:-1e-3}"
MAX_EPOCH="${MAX_EPOCH:-300}"
WARMUP_RATIO="${WARMUP_RATIO:-0.06}"

train "$DATA" --task gigaword --selected-cols 0,1 \
    --label-smoothing 0.1 --lr "$LR" --max-epoch "$MAX_EPOCH" --warmup-ratio "$WARMUP_RATIO" \
    --batch-size "$BATCH_SIZE" --update-freq "$UPDATE_FREQ" --clip-norm 1.0 \
    --max-src-length 512 --max-tgt-length 128 --noise-ratio 0.2 \
    --eval-rouge --eval-print-samples \
    --eval-args '{"beam":10,"lenpen":0.7,"max_len_b":256,"no_repeat_ngram_size":3}' \
    --best-checkpoint-metric rougeL_f1 --maximize-best-checkpoint-metric \
    --save-interval-updates 2500 --validate-interval-updates 2500 --no-epoch-checkpoints \
    --keep-best-checkpoints 1 --fixed-validation-seed 7
