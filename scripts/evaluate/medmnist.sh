#!/usr/bin/env bash
# Evaluate a MedMNIST checkpoint with fairseq-generate --scoring accuracy (every class scored, as
# BiomedGPT's scripts/image_cls/evaluate_medmnist.sh).
#
# Usage: scripts/evaluate/medmnist.sh [--dry-run] [--] [fairseq-generate flags, appended last]
#
# SUBSET (default bloodmnist). Data in DATA_DIR (default data/medmnist): ${SUBSET}_test.tsv (--selected-cols 0,2).
# CHECKPOINT defaults to $SAVE_DIR/checkpoint_best.pt of the fine-tuning run. Task settings come from the
# checkpoint; the class set is ANS2LABEL (default: ${SUBSET}_class2label.pkl of DATA_DIR when it exists), else
# the checkpoint's.
# Variables: SUBSET DATA_DIR DATA CHECKPOINT SAVE_DIR ARCH ANS2LABEL BATCH_SIZE RESULTS_DIR, plus those of
# scripts/lib.sh (NGPUS, PRECISION, PYTHON, DRY_RUN, ...).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
parse_args "$@"

SUBSET="${SUBSET:-bloodmnist}"
DATA_DIR="${DATA_DIR:-$ROOT/data/medmnist}"
DATA="${DATA:-$DATA_DIR/${SUBSET}_test.tsv}"
ARCH="${ARCH:-ofa_tiny}"
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/finetune/medmnist/$SUBSET/$ARCH}"
CHECKPOINT="${CHECKPOINT:-$SAVE_DIR/checkpoint_best.pt}"
if [ -z "${ANS2LABEL:-}" ] && [ -f "$DATA_DIR/${SUBSET}_class2label.pkl" ]; then
    ANS2LABEL="$DATA_DIR/${SUBSET}_class2label.pkl"
fi
BATCH_SIZE="${BATCH_SIZE:-32}"

overrides='"selected_cols": "0,2"'
if [ -n "${ANS2LABEL:-}" ]; then overrides+=', "ans2label_file": '"$(py_str "$ANS2LABEL")"; fi

generate "$DATA" "$overrides" --task image_classify --scoring accuracy
