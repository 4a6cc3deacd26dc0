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
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
parse_args "$@"

DATA_DIR="${DATA_DIR:-$ROOT/data/pathvqa}"
DATA="${DATA:-$DATA_DIR/test.tsv}"
ARCH="${ARCH:-ofa_tiny}"
SAVE_DIR="${SAVE_DIR:-$ROOT/runs/finetune/pathvqa/$ARCH}"
CHECKPOINT="${CHECKPOINT:-$SAVE_DIR/checkpoint_best.pt}"
if [ -z "${ANS2LABEL:-}" ] && [ -f "$DATA_DIR/trainval_ans2label.pkl" ]; then
    ANS2LABEL="$DATA_DIR/trainval_ans2label.pkl"
fi
BATCH_SIZE="${BATCH_SIZE:-64}"
INFERENCE="${INFERENCE:-beamsearch}"
BEAM="${BEAM:-1}"
EMA_EVAL="${EMA_EVAL:-1}"
ZERO_SHOT="${ZERO_SHOT:-0}"

overrides='"selected_cols": "0,5,2,3,4", "val_inference_type": '"$(py_str "$INFERENCE")"
if [ -n "${ANS2LABEL:-}" ]; then overrides+=', "ans2label_file": '"$(py_str "$ANS2LABEL")"; fi
if [ "$EMA_EVAL" = 1 ]; then overrides+=', "ema_eval": True'; fi
flags=(--task vqa_gen --scoring vqa_accuracy --beam "$BEAM" --unnormalized --temperature 1.0)
if [ "$ZERO_SHOT" = 1 ]; then flags+=(--zero-shot); fi

generate "$DATA" "$overrides" "${flags[@]}"
