#!/usr/bin/env bash
# Fine-tune on ROCO captions (task caption), with the settings of BiomedGPT's PEIR Gross script.
#
# Usage: scripts/finetune/roco.sh [--dry-run] [--] [fairseq-train flags, appended last]
#
# Data in DATA_DIR (default data/roco): roco_train.tsv and roco_val.tsv with the columns
# uniq_id, image_id, caption[&&more references], objects, image base64 (--selected-cols 0,4,2).
# CIDER_CACHED_TOKENS: CIDEr-D document frequencies for validation (default: roco-valid-words.p in
# DATA_DIR when it exists; otherwise they are computed from the validation references).
# Variables: DATA_DIR DATA CIDER_CACHED_TOKENS SAVE_DIR RESTORE ARCH BATCH_SIZE UPDATE_FREQ LR MAX_EPOCH
# WARMUP_RATIO PATCH_IMAGE_SIZE, plus those of scripts/lib.sh (NGPUS, PRECISION, PYTHON, DRY_RUN, ...).
# Evaluate the result with scripts/evaluate/roco.sh (same DATA_DIR, SAVE_DIR and ARCH).
# The recipe is scripts/finetune/peir_gross.sh; this file only sets the dataset's defaults.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ARCH="${ARCH:-ofa_tiny}"
DATA_DIR="${DATA_DIR:-$ROOT/data/roco}"
DATA="${DATA:-$DATA_DIR/roco_train.tsv,$DATA_DIR/roco_val.tsv}"
if [ -z "${CIDER_CACHED_TOKENS+x}" ] && [ -f "$DATA_DIR/roco-valid-words.p" ]; then
    CIDER_CACHED_TOKENS="$DATA_DIR/roco-valid-words.p"
fi
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/finetune/roco/$ARCH}"
export ARCH DATA_DIR DATA SAVE_DIR
[ -z "${CIDER_CACHED_TOKENS+x}" ] || export CIDER_CACHED_TOKENS
exec "$ROOT/scripts/finetune/peir_gross.sh" "$@"
