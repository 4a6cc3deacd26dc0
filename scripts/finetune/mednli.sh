#!/usr/bin/env bash
# Fine-tune on MedNLI (task mnli), as BiomedGPT's scripts/mednli/train_mednli.sh.
#
# Usage: scripts/finetune/mednli.sh [--dry-run] [--] [fairseq-train flags, appended last]
#
# Data in DATA_DIR (default data/mednli): mednli_train.tsv and mednli_val.tsv with the columns
# sentence1, sentence2, label (--selected-cols 0,1,2; label 0/1/2 or neutral/entailment/contradiction).
# Variables: DATA_DIR DATA SAVE_DIR RESTORE ARCH BATCH_SIZE UPDATE_FREQ LR MAX_EPOCH WARMUP_RATIO,
# plus those of scripts/lib.sh (NGPUS, PRECISION, PYTHON, DRY_RUN, ...).
# Evaluate the result with scripts/evaluate/mednli.sh (same DATA_DIR, SAVE_DIR and ARCH).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
parse_args "$@"

DATA_DIR="${DATA_DIR:-$ROOT/data/mednli}"
DATA="${DATA:-$DATA_DIR/mednli_train.tsv,$DATA_DIR/mednli_val.tsv}"
ARCH="${ARCH:-ofa_tiny}"
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/finetune/mednli/$ARCH}"
case "$ARCH" in  # the reference's per-scale settings
    ofa_tiny|ofa_medium) batch=32 ;;
    *) batch=16 ;;
esac
BATCH_SIZE="${BATCH_SIZE:-$batch}"  # per GPU
UPDATE_FREQ="${UPDATE_FREQ:-2}"
LR="${LR:-7e-5}"
MAX_EPOCH="${MAX_EPOCH:-200}"
WARMUP_RATIO="${WARMUP_RATIO:-0.06}"

train "$DATA" --task mnli --selected-cols 0,1,2 \
    --label-smoothing 0.0 --lr "$LR" --max-epoch "$MAX_EPOCH" --warmup-ratio "$WARMUP_RATIO" \
    --batch-size "$BATCH_SIZE" --update-freq "$UPDATE_FREQ" --clip-norm 1.0 \
    --max-src-length 512 --max-tgt-length 30 --prompt-type src \
    --best-checkpoint-metric acc --maximize-best-checkpoint-metric --keep-best-checkpoints 1 \
    --fp16-init-scale 16 --fixed-validation-seed 7
