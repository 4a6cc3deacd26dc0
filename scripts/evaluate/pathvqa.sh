#!/usr/bin/env bash
# Evaluate a PathVQA checkpoint with fairseq-generate --scoring vqa_accuracy, with the settings of BiomedGPT's
# VQA-RAD evaluation (beam search over the answer trie, beam 1, EMA weights).
#
# Usage: scripts/evaluate/pathvqa.sh [--dry-run] [--] [fairseq-generate flags, appended last]
#
# Data in DATA_DIR (default data/pathvqa, the folder of scripts/finetune/pathvqa.sh): test.tsv
# (--selected-cols 0,5,2,3,4). CHECKPOINT defaults to $SAVE_DIR/checkpoint_best.pt of the fine-tuning run.
# Task settings come from the checkpoint; nothing of the training machine is needed: the answer set is
# ANS2LABEL (default: trainval_ans2label.pkl of DATA_DIR when it exists, the training one), else the checkpoint's.
# INFERENCE=beamsearch (default) | allcand (score every answer); BEAM (default 1); EMA_EVAL=1 (default) evaluates
# the EMA weights stored by --store-ema (0: the trained weights); ZERO_SHOT=1 adds --zero-shot.
# Variables: DATA_DIR DATA CHECKPOINT SAVE_DIR ARCH ANS2LABEL BATCH_SIZE INFERENCE BEAM EMA_EVAL ZERO_SHOT
# RESULTS_DIR, plus those of scripts/lib.sh (NGPUS, PRECISION, PYTHON, DRY_RUN, ...).
# The recipe is scripts/evaluate/vqa_rad.sh; this file only sets the dataset's defaults.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ARCH="${ARCH:-ofa_tiny}"
DATA_DIR="${DATA_DIR:-$ROOT/data/pathvqa}"
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/finetune/pathvqa/$ARCH}"
export ARCH DATA_DIR SAVE_DIR
exec "$ROOT/scripts/evaluate/vqa_rad.sh" "$@"
