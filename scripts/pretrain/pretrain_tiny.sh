#!/usr/bin/env bash
# Pretrain ofa_tiny on the unified multi-task data (task unify_task), as BiomedGPT's scripts/pretrain/pretrain_tiny.sh.
#
# Usage: scripts/pretrain/pretrain_tiny.sh [--dry-run] [--] [fairseq-train flags, appended last]
#
# Data in DATA_DIR (default data/pretrain):
#   vision_language.tsv  uniq_id, image, caption, question, refs, gt_objects, dataset_name, type (--selected-cols 0..7)
#   text.tsv             id, text (TEXT_DATA; empty: no text infilling)
#   image.tsv            id, image, VQ-GAN codes (IMAGE_DATA; empty: no image infilling)
#   detection.tsv        id, image, "x0,y0,x1,y1,cat_id,cat_name&&..." (DETECTION_DATA; empty: no detection)
# NEG_SAMPLE_DIR (optional; the reference script never passed it although its task required it): a folder with
# type2ans.json, object.txt and all_captions.txt for the negative image-text matching samples.
# RESTORE (optional) continues from a checkpoint such as biomedgpt_tiny.pt, as the reference did; empty: from scratch.
# Variables: DATA_DIR DATA TEXT_DATA IMAGE_DATA DETECTION_DATA NEG_SAMPLE_DIR SAVE_DIR RESTORE ARCH BATCH_SIZE
# UPDATE_FREQ LR MAX_EPOCH WARMUP_RATIO PATCH_IMAGE_SIZE, plus those of scripts/lib.sh (NGPUS, NNODES, ...).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
parse_args "$@"

DATA_DIR="${DATA_DIR:-$ROOT/data/pretrain}"
DATA="${DATA:-$DATA_DIR/vision_language.tsv}"
TEXT_DATA="${TEXT_DATA-$DATA_DIR/text.tsv}"
IMAGE_DATA="${IMAGE_DATA-$DATA_DIR/image.tsv}"
DETECTION_DATA="${DETECTION_DATA-$DATA_DIR/detection.tsv}"
NEG_SAMPLE_DIR="${NEG_SAMPLE_DIR:-}"
ARCH="${ARCH:-ofa_tiny}"
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/pretrain/$ARCH}"
BATCH_SIZE="${BATCH_SIZE:-16}"  # per GPU
UPDATE_FREQ="${UPDATE_FREQ:-1}"
LR="${LR:-5e-5}"
MAX_EPOCH="${MAX_EPOCH:-20}"
WARMUP_RATIO="${WARMUP_RATIO:-0.01}"
PATCH_IMAGE_SIZE="${PATCH_IMAGE_SIZE:-256}"

extra_data=()
if [ -n "$TEXT_DATA" ]; then extra_data+=(--text-data "$TEXT_DATA" --text-selected-cols 0,1); fi
if [ -n "$IMAGE_DATA" ]; then extra_data+=(--image-data "$IMAGE_DATA" --image-selected-cols 0,1,2); fi
if [ -n "$DETECTION_DATA" ]; then
    extra_data+=(--detection-data "$DETECTION_DATA" --detection-selected-cols 0,1,2)
fi
if [ -n "$NEG_SAMPLE_DIR" ]; then extra_data+=(--neg-sample-dir "$NEG_SAMPLE_DIR"); fi

train "$DATA" --task unify_task --selected-cols 0,1,2,3,4,5,6,7 ${extra_data[@]+"${extra_data[@]}"} \
    --label-smoothing 0.0 --lr "$LR" --max-epoch "$MAX_EPOCH" --warmup-ratio "$WARMUP_RATIO" \
    --batch-size "$BATCH_SIZE" --update-freq "$UPDATE_FREQ" --clip-norm 5.0 \
    --max-src-length 80 --max-tgt-length 30 --patch-image-size "$PATCH_IMAGE_SIZE" --sample-patch-num 196 \
    --max-image-size 512 --code-image-size 128 --mask-ratio 0.3 --random-ratio 0.0 --keep-ratio 0.0 \
    --mask-length span-poisson --poisson-lambda 3.0 --replace-length 1 \
    --disable-validation --keep-last-epochs 1 --save-interval 10 --fp16-scale-window 128
