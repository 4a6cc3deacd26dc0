#!/usr/bin/env bash
# Fine-tune on a MedMNIST subset (task image_classify), as BiomedGPT's scripts/image_cls/train_medmnist.sh.
#
# Usage: scripts/finetune/medmnist.sh [--dry-run] [--] [fairseq-train flags, appended last]
#
# SUBSET (default bloodmnist; also breastmnist, dermamnist, pathmnist, pneumoniamnist, octmnist, organcmnist).
# Data in DATA_DIR (default data/medmnist): ${SUBSET}_train.tsv and ${SUBSET}_val.tsv with the columns
# image base64, label index, label name (--selected-cols 0,2), and ${SUBSET}_class2label.pkl (ANS2LABEL).
# The reference passed --max-update=${total_num_updates}, an undefined variable: the schedule here runs
# MAX_EPOCH epochs (polynomial_decay_ratio derives the total number of updates from it).
# Variables: SUBSET DATA_DIR DATA ANS2LABEL SAVE_DIR RESTORE ARCH BATCH_SIZE UPDATE_FREQ LR MAX_EPOCH
# WARMUP_RATIO PATCH_IMAGE_SIZE, plus those of scripts/lib.sh (NGPUS, PRECISION, PYTHON, DRY_RUN, ...).
# Evaluate the result with scripts/evaluate/medmnist.sh (same SUBSET, DATA_DIR, SAVE_DIR and ARCH).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
parse_args "$@"

SUBSET="${SUBSET:-bloodmnist}"
DATA_DIR="${DATA_DIR:-$ROOT/data/medmnist}"
DATA="${DATA:-$DATA_DIR/${SUBSET}_train.tsv,$DATA_DIR/${SUBSET}_val.tsv}"
ANS2LABEL="${ANS2LABEL:-$DATA_DIR/${SUBSET}_class2label.pkl}"
ARCH="${ARCH:-ofa_tiny}"
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/finetune/medmnist/$SUBSET/$ARCH}"
case "$ARCH" in  # the reference's per-scale settings
    ofa_tiny|ofa_medium) batch=64 ;;
    *) batch=32 ;;
esac
BATCH_SIZE="${BATCH_SIZE:-$batch}"  # per GPU
UPDATE_FREQ="${UPDATE_FREQ:-4}"
LR="${LR:-5e-5}"
MAX_EPOCH="${MAX_EPOCH:-5}"
WARMUP_RATIO="${WARMUP_RATIO:-0.6}"
PATCH_IMAGE_SIZE="${PATCH_IMAGE_SIZE:-384}"

train "$DATA" --task image_classify --selected-cols 0,2 --ans2label-file "$ANS2LABEL" \
    --label-smoothing 0.1 --lr "$LR" --max-epoch "$MAX_EPOCH" --warmup-ratio "$WARMUP_RATIO" \
    --batch-size "$BATCH_SIZE" --update-freq "$UPDATE_FREQ" --clip-norm 1.0 \
    --max-src-length 128 --max-tgt-length 64 --patch-image-size "$PATCH_IMAGE_SIZE" \
    --imagenet-default-mean-and-std --valid-batch-size 20 \
    --best-checkpoint-metric score --maximize-best-checkpoint-metric --keep-last-epochs 1 \
    --freeze-encoder-embedding --freeze-decoder-embedding --fixed-validation-seed 9
