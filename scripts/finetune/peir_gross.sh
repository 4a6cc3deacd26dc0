#!/usr/bin/env bash
# Fine-tune on PEIR Gross captions (task caption), as BiomedGPT's scripts/caption/train_peir_gross.sh.
#
# Usage: scripts/finetune/peir_gross.sh [--dry-run] [--] [fairseq-train flags, appended last]
#
# Data in DATA_DIR (default data/peir_gross): peir_gross_train.tsv and peir_gross_val.tsv with the columns
# uniq_id, image_id, caption[&&more references], objects, image base64 (--selected-cols 0,4,2).
# CIDER_CACHED_TOKENS: CIDEr-D document frequencies for validation (default: peir-gross-valid-words.p in
# DATA_DIR when it exists; otherwise they are computed from the validation references).
# Variables: DATA_DIR DATA CIDER_CACHED_TOKENS SAVE_DIR RESTORE ARCH BATCH_SIZE UPDATE_FREQ LR MAX_EPOCH
# WARMUP_RATIO PATCH_IMAGE_SIZE, plus those of scripts/lib.sh (NGPUS, PRECISION, PYTHON, DRY_RUN, ...).
# Evaluate the result with scripts/evaluate/peir_gross.sh (same DATA_DIR, SAVE_DIR and ARCH).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
parse_args "$@"

DATA_DIR="${DATA_DIR:-$ROOT/data/peir_gross}"
DATA="${DATA:-$DATA_DIR/peir_gross_train.tsv,$DATA_DIR/peir_gross_val.tsv}"
if [ -z "${CIDER_CACHED_TOKENS+x}" ] && [ -f "$DATA_DIR/peir-gross-valid-words.p" ]; then
    CIDER_CACHED_TOKENS="$DATA_DIR/peir-gross-valid-words.p"
fi
ARCH="${ARCH:-ofa_tiny}"
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/finetune/peir_gross/$ARCH}"
BATCH_SIZE="${BATCH_SIZE:-16}"  # per GPU
UPDATE_FREQ="${UPDATE_FREQ:-4}"
LR="${LR:-1e-5}"
MAX_EPOCH="${MAX_EPOCH:-100}"
WARMUP_RATIO="${WARMUP_RATIO:-0.06}"
PATCH_IMAGE_SIZE="${PATCH_IMAGE_SIZE:-480}"

cider=(--eval-cider)
if [ -n "${CIDER_CACHED_TOKENS:-}" ]; then cider+=(--eval-cider-cached-tokens "$CIDER_CACHED_TOKENS"); fi

train "$DATA" --task caption --selected-cols 0,4,2 \
    --label-smoothing 0.1 --lr "$LR" --max-epoch "$MAX_EPOCH" --warmup-ratio "$WARMUP_RATIO" \
    --batch-size "$BATCH_SIZE" --update-freq "$UPDATE_FREQ" --clip-norm 1.0 \
    --max-src-length 80 --max-tgt-length 20 --patch-image-size "$PATCH_IMAGE_SIZE" \
    "${cider[@]}" --eval-args '{"beam":5,"max_len_b":16,"no_repeat_ngram_size":3}' \
    --best-checkpoint-metric cider --maximize-best-checkpoint-metric \
    --drop-worst-ratio 0.2 --drop-worst-after 600 \
    --save-interval 1 --validate-interval 1 --save-interval-updates 500 --validate-interval-updates 500 \
    --no-epoch-checkpoints --keep-best-checkpoints 1 \
    --freeze-encoder-embedding --freeze-decoder-embedding --find-unused-parameters \
    --fp16-scale-window 512 --fixed-validation-seed 7
