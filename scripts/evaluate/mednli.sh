#!/usr/bin/env bash
# Evaluate a MedNLI checkpoint with fairseq-generate --scoring accuracy (every answer scored, as
# BiomedGPT's scripts/mednli/evaluate_mednli.sh).
#
# Usage: scripts/evaluate/mednli.sh [--dry-run] [--] [fairseq-generate flags, appended last]
#
# Data in DATA_DIR (default data/mednli): mednli_test.tsv (--selected-cols 0,1,2). CHECKPOINT defaults to
# $SAVE_DIR/checkpoint_best.pt of the fine-tuning run.
# Variables: DATA_DIR DATA CHECKPOINT SAVE_DIR ARCH BATCH_SIZE RESULTS_DIR, plus those of scripts/lib.sh
# (NGPUS, PRECISION, PYTHON, DRY_RUN, ...).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
parse_args "$@"

DATA_DIR="${DATA_DIR:-$ROOT/data/mednli}"
DATA="${DATA:-$DATA_DIR/mednli_test.tsv}"
ARCH="${ARCH:-ofa_tiny}"
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/finetune/mednli/$ARCH}"
CHECKPOINT="${CHECKPOINT:-$SAVE_DIR/checkpoint_best.pt}"
BATCH_SIZE="${BATCH_SIZE:-32}"

generate "$DATA" '"selected_cols": "0,1,2"' --task mnli --scoring accuracy
