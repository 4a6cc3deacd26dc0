# shellcheck shell=bash
# Shared pieces of scripts/{finetune,evaluate,pretrain}/*.sh: sourced, never run.
#
# A script sets its dataset defaults, then calls `train ...` or `generate ...` with the task's flags. Every
# setting is an environment variable with a default (relative to the repository root, so the scripts run from
# any folder):
#
#   PYTHON           python of the environment holding biomedgpt + fairseq (default: $ROOT/.venv/bin/python when
#                    it exists and no virtualenv is active, else `python`); fairseq-train, fairseq-generate and
#                    torchrun are taken from the same bin folder when they are there, else from PATH
#   USER_DIR         fairseq --user-dir (default: the folder `$PYTHON -m biomedgpt.userdir` prints)
#   ARCH             ofa_tiny | ofa_medium | ofa_base | ofa_large | ofa_huge (default ofa_tiny)
#   DATA_DIR, DATA   dataset folder (default $ROOT/data/<dataset>) and fairseq's DATA argument (TSV files)
#   SAVE_DIR         checkpoints (default $ROOT/runs/finetune/<dataset>/$ARCH)
#   RESTORE          pretrained checkpoint to start from (--finetune-from-model); empty: train from scratch
#   BPE_DIR          --bpe-dir (default: the GPT-2 files packaged with biomedgpt)
#   NGPUS            GPUs per node (default: the visible CUDA GPUs, 0 without any); 0 adds --cpu
#   NPROC_PER_NODE   worker processes per node (default: NGPUS, at least 1; >1 on a CPU machine runs gloo workers)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT
#                    multi-node training through torchrun (defaults 1, 0, 127.0.0.1, 29500): run the same script
#                    on every node with its own NODE_RANK and the address/port of node 0. On one node without
#                    MASTER_ADDR/MASTER_PORT, torchrun runs --standalone (a free port of its own)
#   PRECISION        fp16 (GPU default) | bf16 | fp32 (CPU default)
#   DRY_RUN=1        print the command (one line, shell-quoted) instead of running it; same as --dry-run
#   NUM_WORKERS      DataLoader workers (default 0); TENSORBOARD_DIR: --tensorboard-logdir (training)
#   CHECKPOINT, RESULTS_DIR, GEN_SUBSET (evaluation): checkpoint (default $SAVE_DIR/checkpoint_best.pt), folder
#                    for fairseq-generate's output (default: printed), split name (default test)
#
# Arguments of every script: `[--dry-run] [--] [fairseq flags...]`. Flags pass through to fairseq after the
# script's own, so they override them (argparse keeps the last value), e.g.
#   scripts/finetune/vqa_rad.sh --dry-run -- --max-epoch 5 --encoder-layers 1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

usage() {
    sed -n '2,/^set -euo pipefail/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
    exit 0
}

# parse_args "$@": sets DRY_RUN and EXTRA_ARGS (the fairseq flags to append).
EXTRA_ARGS=()
parse_args() {
    DRY_RUN="${DRY_RUN:-0}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            -h|--help) usage ;;
            --) shift; EXTRA_ARGS+=("$@"); break ;;
            *) EXTRA_ARGS+=("$1") ;;
        esac
        shift
    done
}

# shell_quote ARGS...: one line that a shell reads back as exactly ARGS.
shell_quote() {
    local arg out=()
    for arg in "$@"; do
        if [[ "$arg" =~ ^[A-Za-z0-9_./:=,+@%^-]+$ ]]; then
            out+=("$arg")
        else
            out+=("'${arg//\'/\'\\\'\'}'")
        fi
    done
    printf '%s\n' "${out[*]}"
}

# py_str VALUE: a double-quoted Python string literal (--model-overrides is read as a Python literal).
py_str() {
    local value="${1//\\/\\\\}"
    printf '"%s"' "${value//\"/\\\"}"
}

# ------------------------------------------------------------------ environment
if [ -z "${PYTHON:-}" ]; then
    if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then
        PYTHON="$ROOT/.venv/bin/python"
    else
        PYTHON=python
    fi
fi

# tool NAME: NAME from the bin folder of $PYTHON, else from PATH.
tool() {
    local python_path bin
    python_path="$(command -v "$PYTHON" || true)"
    [ -n "$python_path" ] || die "PYTHON=$PYTHON not found"
    bin="$(dirname "$python_path")"
    if [ -x "$bin/$1" ]; then
        echo "$bin/$1"
    elif command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    else
        die "$1 not found next to $python_path nor on PATH (install biomedgpt: make install)"
    fi
}

# user_dir: the folder `python -m biomedgpt.userdir` prints, found without importing the package (which would
# import torch and fairseq: seconds per script run).
user_dir() {
    if [ -n "${USER_DIR:-}" ]; then
        echo "$USER_DIR"
    else
        "$PYTHON" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("biomedgpt").origin))' \
            2>/dev/null || die "biomedgpt is not installed for PYTHON=$PYTHON (set PYTHON, or run make install)"
    fi
}

# count_gpus: CUDA_VISIBLE_DEVICES if set, else nvidia-smi, else torch (only when a driver is present), else 0.
count_gpus() {
    if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
        local list="${CUDA_VISIBLE_DEVICES// /}"
        if [ -z "$list" ] || [ "$list" = "-1" ] || [ "$list" = "none" ]; then echo 0; return; fi
        awk -F, '{print NF}' <<<"$list"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    elif [ -e /dev/nvidia0 ]; then
        "$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0
    else
        echo 0
    fi
}

setup_devices() {
    NGPUS="${NGPUS:-$(count_gpus)}"
    STANDALONE=1  # one node and no port asked for: torchrun picks a free port itself
    if [ "${NNODES:-1}" != 1 ] || [ -n "${MASTER_ADDR:-}" ] || [ -n "${MASTER_PORT:-}" ]; then STANDALONE=0; fi
    NNODES="${NNODES:-1}"
    NODE_RANK="${NODE_RANK:-0}"
    MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
    MASTER_PORT="${MASTER_PORT:-29500}"
    local default_nproc=$(( NGPUS > 0 ? NGPUS : 1 ))
    NPROC_PER_NODE="${NPROC_PER_NODE:-$default_nproc}"
    [[ "$NGPUS" =~ ^[0-9]+$ && "$NNODES" =~ ^[1-9][0-9]*$ && "$NPROC_PER_NODE" =~ ^[1-9][0-9]*$ ]] \
        || die "NGPUS=$NGPUS, NNODES=$NNODES, NPROC_PER_NODE=$NPROC_PER_NODE must be whole numbers"
    if [ "$NGPUS" -gt 0 ]; then PRECISION="${PRECISION:-fp16}"; else PRECISION="${PRECISION:-fp32}"; fi
    DEVICE_ARGS=()
    if [ "$NGPUS" -eq 0 ]; then DEVICE_ARGS+=(--cpu); fi
    case "$PRECISION" in
        fp16) [ "$NGPUS" -gt 0 ] || die "PRECISION=fp16 needs a GPU (use bf16 or fp32 on the CPU)"
              DEVICE_ARGS+=(--fp16) ;;
        bf16) DEVICE_ARGS+=(--bf16) ;;
        fp32) ;;
        *) die "PRECISION=$PRECISION: expected fp16, bf16 or fp32" ;;
    esac
}

# run_or_print COMMAND...: DRY_RUN=1 prints it, else runs it in place of the script.
run_or_print() {
    if [ "$DRY_RUN" = 1 ]; then
        shell_quote "$@"
    else
        exec "$@"
    fi
}

# ------------------------------------------------------------------ flags shared by the reference scripts
# Model flags of every BiomedGPT script (the released checkpoints were trained with them).
MODEL_FLAGS=(
    --encoder-normalize-before --decoder-normalize-before --share-decoder-input-output-embed
    --share-all-embeddings --layernorm-embedding --patch-layernorm-embedding --code-layernorm-embedding
    --add-type-embedding --scale-attn --scale-fc --scale-heads --disable-entangle --num-bins 1000
    --resnet-drop-path-rate 0.0 --encoder-drop-path-rate 0.1 --decoder-drop-path-rate 0.1
    --dropout 0.1 --attention-dropout 0.0
)
# Optimiser of every script; the reference's `polynomial_decay --warmup-ratio` is our `polynomial_decay_ratio`
# (total updates derived from --max-epoch, as OFA's trainer did).
OPTIM_FLAGS=(
    --criterion adjust_label_smoothed_cross_entropy --optimizer adam --adam-betas '(0.9,0.999)' --adam-eps 1e-08
    --weight-decay 0.01 --lr-scheduler polynomial_decay_ratio
)

# train DATA TASK_FLAGS...: fairseq-train (one process, or torchrun for several workers / nodes).
train() {
    local data="$1"; shift
    setup_devices
    local udir; udir="$(user_dir)"
    local args=("$data" --user-dir "$udir" --arch "${ARCH}" "$@" "${MODEL_FLAGS[@]}" "${OPTIM_FLAGS[@]}"
                --save-dir "$SAVE_DIR" --num-workers "${NUM_WORKERS:-0}" --log-format simple --log-interval 10
                "${DEVICE_ARGS[@]}")
    if [ -n "${BPE_DIR:-}" ]; then args+=(--bpe-dir "$BPE_DIR"); fi
    if [ -n "${RESTORE:-}" ]; then args+=(--finetune-from-model "$RESTORE"); fi
    if [ -n "${TENSORBOARD_DIR:-}" ]; then args+=(--tensorboard-logdir "$TENSORBOARD_DIR"); fi
    # Always explicit: fairseq's default is every visible GPU, and it would spawn that many workers itself.
    local world=$(( NNODES * NPROC_PER_NODE ))
    args+=(--distributed-world-size "$world")
    local fairseq_train launcher cmd
    fairseq_train="$(tool fairseq-train)"
    if [ "$world" -gt 1 ]; then
        # Every task leaves some parameters without gradient (e.g. the decoder's image-position tables when it
        # writes text), which torch's DDP refuses unless told to look for them.
        args+=(--find-unused-parameters)
        if [ "$NGPUS" -eq 0 ]; then args+=(--distributed-backend gloo); fi
        launcher="$(tool torchrun)"
        if [ "$STANDALONE" = 1 ]; then
            cmd=("$launcher" --standalone --nproc_per_node "$NPROC_PER_NODE" "$fairseq_train")
        else
            cmd=("$launcher" --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE"
                 --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$fairseq_train")
        fi
    else
        cmd=("$fairseq_train")
    fi
    if [ "$DRY_RUN" != 1 ]; then mkdir -p "$SAVE_DIR"; fi
    run_or_print "${cmd[@]}" "${args[@]}" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
}

# generate DATA OVERRIDES TASK_FLAGS...: fairseq-generate on $CHECKPOINT, one process (GPU 0 or the CPU).
# OVERRIDES is the inside of the --model-overrides dict (task settings that replace the checkpoint's, so the
# evaluation needs no file of the training machine); `data` and `bpe_dir` are added here.
generate() {
    local data="$1" overrides="$2"; shift 2
    NPROC_PER_NODE=1 NNODES=1
    setup_devices
    if [ "$DRY_RUN" != 1 ] && [ ! -f "$CHECKPOINT" ]; then
        die "checkpoint $CHECKPOINT not found (set CHECKPOINT, or SAVE_DIR of the fine-tuning run)"
    fi
    local udir; udir="$(user_dir)"
    local bpe=None
    if [ -n "${BPE_DIR:-}" ]; then bpe="$(py_str "$BPE_DIR")"; fi
    overrides="{\"data\": $(py_str "$data"), \"bpe_dir\": $bpe${overrides:+, $overrides}}"
    local args=("$data" --user-dir "$udir" --path "$CHECKPOINT" --gen-subset "${GEN_SUBSET:-test}"
                --batch-size "${BATCH_SIZE}" --num-workers "${NUM_WORKERS:-0}" --log-format simple
                --model-overrides "$overrides" "$@" "${DEVICE_ARGS[@]}")
    if [ -n "${BPE_DIR:-}" ]; then args+=(--bpe-dir "$BPE_DIR"); fi
    if [ -n "${RESULTS_DIR:-}" ]; then
        args+=(--results-path "$RESULTS_DIR")
        if [ "$DRY_RUN" != 1 ]; then mkdir -p "$RESULTS_DIR"; fi
    fi
    local fairseq_generate; fairseq_generate="$(tool fairseq-generate)"
    run_or_print "$fairseq_generate" "${args[@]}" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
}
