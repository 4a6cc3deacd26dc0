#!/usr/bin/env bash
# Evaluate a ROCO caption checkpoint with fairseq-generate --scoring cider, with the settings of
# BiomedGPT's PEIR Gross evaluation (beam 10, max_len_b 32, no_repeat_ngram_size 3).
#
# Usage: scripts/evaluate/roco.sh [--dry-run] [--] [fairseq-generate flags, appended last]
#
# Data in DATA_DIR (default data/roco): roco_test.tsv (SELECTED_COLS, default 0,4,2 as in training).
# CHECKPOINT defaults to $SAVE_DIR/checkpoint_best.pt of the fine-tuning run. Task settings come from the
# checkpoint, without its validation CIDEr settings (so the training machine's document-frequency file is not
# needed); the score's document frequencies come from the test references unless CIDER_CACHED_TOKENS is set.
# Variables: DATA_DIR DATA CHECKPOINT SAVE_DIR ARCH SELECTED_COLS CIDER_CACHED_TOKENS BATCH_SIZE BEAM MAX_LEN_B
# RESULTS_DIR, plus those of scripts/lib.sh (NGPUS, PRECISION, PYTHON, DRY_RUN, ...).
# The recipe is scripts/evaluate/peir_gross.sh; this file only sets the dataset's defaults.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ARCH="${ARCH:-ofa_tiny}"
DATA_DIR="${DATA_DIR:-$ROOT/data/roco}"
DATA="${DATA:-$DATA_DIR/roco_test.tsv}"
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/finetune/roco/$ARCH}"
export ARCH DATA_DIR DATA SAVE_DIR
exec "$ROOT/scripts/evaluate/peir_gross.sh" "$@"
