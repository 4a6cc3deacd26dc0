#!/usr/bin/env bash
# Fine-tune on PathVQA (task vqa_gen), with the settings of BiomedGPT's VQA-RAD script.
#
# Usage: scripts/finetune/pathvqa.sh [--dry-run] [--] [fairseq-train flags, appended last]
#
# Data in DATA_DIR (default data/pathvqa): train.tsv and val.tsv with the columns
# question_id, image_id, question, conf|!+answer[&&...], objects, image base64 (--selected-cols 0,5,2,3,4),
# and the answer set trainval_ans2label.pkl (a dict answer -> label; .json works too).
# Variables: DATA_DIR DATA ANS2LABEL SAVE_DIR RESTORE ARCH BATCH_SIZE UPDATE_FREQ LR MAX_EPOCH WARMUP_RATIO
# PATCH_IMAGE_SIZE, plus those of scripts/lib.sh (NGPUS, PRECISION, PYTHON, DRY_RUN, ...).
# RESTORE=path/to/biomedgpt_tiny.pt starts from a pretrained checkpoint (empty: from scratch).
# Evaluate the result with scripts/evaluate/pathvqa.sh (same DATA_DIR, SAVE_DIR and ARCH).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
parse_args "$@"

DATA_DIR="${DATA_DIR:-$ROOT/data/pathvqa}"
DATA="${DATA:-$DATA_DIR/train.tsv,$DATA_DIR/val.tsv}"
ANS2LABEL="${ANS2LABEL:-$DATA_DIR/trainval_ans2label.pkl}"
ARCH="${ARCH:-ofa_tiny}"
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/finetune/pathvqa/$ARCH}"
case "$ARCH" in  # the reference's per-scale settings
    ofa_tiny) batch=64 patch=256 ;;
    ofa_medium) batch=32 patch=256 ;;
    *) batch=16 patch=384 ;;
esac
BATCH_SIZE="${BATCH_SIZE:-$batch}"  # per GPU
UPDATE_FREQ="${UPDATE_FREQ:-4}"
LR="${LR:-5e-5}"
MAX_EPOCH="${MAX_EPOCH:-100}"
WARMUP_RATIO="${WARMUP_RATIO:-0.04}"
PATCH_IMAGE_SIZE="${PATCH_IMAGE_SIZE:-$patch}"

train "$DATA" --task vqa_gen --selected-cols 0,5,2,3,4 --ans2label-file "$ANS2LABEL" \
    --label-smoothing 0.1 --lr "$LR" --max-epoch "$MAX_EPOCH" --warmup-ratio "$WARMUP_RATIO" \
    --batch-size "$BATCH_SIZE" --update-freq "$UPDATE_FREQ" --clip-norm 1.0 \
    --max-src-length 80 --max-object-length 30 --max-tgt-length 40 --patch-image-size "$PATCH_IMAGE_SIZE" \
    --prompt-type prev_output --add-object \
    --uses-ema --store-ema --ema-fp32 --ema-decay 0.9999 --ema-start-update 0 \
    --val-inference-type beamsearch \
    --best-checkpoint-metric vqa_score --maximize-best-checkpoint-metric --keep-last-epochs 1 \
    --freeze-encoder-embedding --freeze-decoder-embedding --fixed-validation-seed 7
