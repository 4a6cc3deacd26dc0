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
# The recipe is scripts/finetune/vqa_rad.sh; this file only sets the dataset's defaults.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ARCH="${ARCH:-ofa_tiny}"
DATA_DIR="${DATA_DIR:-$ROOT/data/pathvqa}"
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/finetune/pathvqa/$ARCH}"
export ARCH DATA_DIR SAVE_DIR
exec "$ROOT/scripts/finetune/vqa_rad.sh" "$@"
