"""Run-time adjustments of stock fairseq 0.12.3.1 (PyPI `fairseq-fixed`) for torch 2.14 and CPU use.

This is the only place where the plugin changes fairseq's behaviour. `apply()` is called first thing by
`biomedgpt/__init__.py`; fairseq imports a `--user-dir` inside `options.parse_args_and_arch`, before it
converts the config, builds the trainer or loads a checkpoint, so every adjustment is in place in time.
Python code that loads checkpoints must `import biomedgpt` first.

Each adjustment is one private function below whose docstring names the breakage it works around:

1. `_allow_checkpoint_globals`: torch >= 2.6 loads with `weights_only=True`; fairseq checkpoints pickle
   `argparse.Namespace` (and old ones numpy scalars). These are allow-listed by name (`SAFE_GLOBALS`), and
   refused or unreadable checkpoints raise `UnsafeCheckpointError` / `CheckpointReadError` naming the file.
   The same wrapper is where the overrides `{'ema_eval': True}` swap in the stored EMA weights
   (`biomedgpt/ema_weights.py`): fairseq has no other hook between reading a checkpoint and building a model.
2. `_untangle_bf16_from_tpu`: `--bf16` silently switches on `--tpu`.
3. `_support_cpu_torchrun`: `torchrun ... fairseq-train --cpu --distributed-backend gloo` crashes or runs
   N independent jobs.
4. `_copy_integer_buffers_in_ema`: `--store-ema` crashes on int64 buffers.
5. `_quiet_known_warnings`: the hydra / torch deprecation warnings that stock fairseq triggers.
6. `_accept_tsv_file_data`: `fairseq-train` with comma-separated TSV files as `data` needed
   `--ignore-unused-valid-subsets`.
7. `_one_line_checkpoint_errors`: in the `fairseq-*` commands, a checkpoint that cannot be used (unsafe, unreadable,
   of another architecture or vocabulary, without EMA weights) ends the command with its one-line message instead
   of a traceback (set BIOMEDGPT_TRACEBACK=1 for the traceback).
8. `_atomic_checkpoint_copies`: fairseq writes `checkpoint_N_M.pt` atomically (temp file + rename) but then *copies*
   it to `checkpoint_last.pt` / `checkpoint_best.pt` in place, so a crash during the copy leaves a truncated
   `checkpoint_last.pt` that the next run fails to resume from.

Rules for this module: never turn off weights-only loading (no `weights_only=False`, no
`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`) and never allow-list anything that can run code; patch nothing that is
not listed above.
"""
import argparse
import os
import pickle
import re
import shutil
import sys
import traceback
import warnings
import weakref

import numpy as np
import torch

from .ema_weights import use_ema_weights, wants_ema_weights

try:
    from numpy._core.multiarray import scalar as _np_scalar  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import scalar as _np_scalar

__all__ = ["apply", "SAFE_GLOBALS", "UnsafeCheckpointError", "CheckpointReadError", "CheckpointMismatchError"]

_APPLIED = False
_MARK = "_biomedgpt_compat"  # attribute set on every wrapper, so nothing is wrapped twice

# Plain data only: classes whose construction from a checkpoint cannot execute code. Tensors, storages,
# dict / list / tuple / set / OrderedDict are already allowed by torch itself.
SAFE_GLOBALS = (
    argparse.Namespace,  # `cfg["model"]` (and legacy `args`) of every fairseq/OFA checkpoint
    (_np_scalar, "numpy._core.multiarray.scalar"),  # numpy scalars (e.g. a `best` score) as numpy >= 2 pickles them
    (_np_scalar, "numpy.core.multiarray.scalar"),  # ... and as numpy 1.x did
    np.dtype,
    *sorted({type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"}, key=lambda t: t.__name__),  # Float64DType, ...
)


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint pickles a global that weights-only loading refuses (it could execute code)."""

    def __init__(self, path, global_name):
        self.path, self.global_name = path, global_name
        super().__init__(
            f"refused to load checkpoint {path}: it references {global_name}, and loading it would execute code; "
            "a checkpoint must contain only tensors, containers (dict/list/tuple/OrderedDict) and argparse.Namespace"
        )


class CheckpointReadError(RuntimeError):
    """A checkpoint file exists but torch cannot read it."""

    def __init__(self, path, exc):
        self.path = path
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        super().__init__(
            f"cannot read checkpoint {path}: the file is truncated or not a PyTorch checkpoint "
            f"({type(exc).__name__}: {detail})"
        )


class CheckpointMismatchError(RuntimeError):
    """A readable checkpoint whose tensors do not fit the model (another architecture or vocabulary)."""


def _marked(fn):
    setattr(fn, _MARK, True)
    return fn


def _raised_by_torch_load(exc):
    frames = traceback.walk_tb(exc.__traceback__)
    return any(frame.f_globals.get("__name__") == "torch.serialization" for frame, _ in frames)


def _allow_checkpoint_globals():
    """torch >= 2.6 defaults `torch.load` to weights_only=True, and fairseq's `load_checkpoint_to_cpu` passes no
    `weights_only`: resume, fairseq-generate and `load_model_ensemble_and_task` fail with `Unsupported global:
    GLOBAL argparse.Namespace`. Allow-list `SAFE_GLOBALS` and turn torch's long advice (which suggests the unsafe
    `weights_only=False`) into a one-line error naming the file."""
    import fairseq.checkpoint_utils as cu

    torch.serialization.add_safe_globals(list(SAFE_GLOBALS))
    original = cu.load_checkpoint_to_cpu
    if getattr(original, _MARK, False):
        return

    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            state = original(path, *args, **kwargs)
        except Exception as exc:
            if not _raised_by_torch_load(exc):
                raise
            if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc):
                found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
                name = f"the global {found.group(1)}" if found else "an object that is not plain data"
                raise UnsafeCheckpointError(path, name) from None
            raise CheckpointReadError(path, exc) from exc
        overrides = args[0] if args else kwargs.get("arg_overrides")
        return use_ema_weights(state, path) if wants_ema_weights(overrides) else state

    load_checkpoint_to_cpu.__doc__ = original.__doc__
    cu.load_checkpoint_to_cpu = _marked(load_checkpoint_to_cpu)


_TPU_SETTLED = weakref.WeakValueDictionary()  # id(args) -> args whose `tpu` flag was already settled


def _settle_tpu(args, argv):
    # fairseq's parsers use allow_abbrev=False, so an explicit request is exactly the token "--tpu".
    if getattr(args, "bf16", False) and getattr(args, "tpu", False) and "--tpu" not in argv:
        args.tpu = False
    _TPU_SETTLED[id(args)] = args


def _untangle_bf16_from_tpu():
    """`fairseq.options.parse_args_and_arch` sets `args.tpu = True` whenever `--bf16` (or
    `--memory-efficient-bf16`) is given, so bf16 on CPU or GPU crashes with `'NoneType' object has no attribute
    'xla_device'`. Keep `tpu` only when `--tpu` was on the command line. Two entry points: `parse_args_and_arch`
    (the plugin is imported *inside* it, so the running CLI call is not wrapped) and
    `convert_namespace_to_omegaconf`, which `fairseq_cli.*` and `fairseq.trainer` import by name."""
    import fairseq.dataclass.utils as dc_utils
    import fairseq.options as options

    parse, convert = options.parse_args_and_arch, dc_utils.convert_namespace_to_omegaconf
    if getattr(convert, _MARK, False):
        return

    def parse_args_and_arch(parser, input_args=None, *args, **kwargs):
        parsed = parse(parser, input_args, *args, **kwargs)
        _settle_tpu(parsed, sys.argv[1:] if input_args is None else list(input_args))
        return parsed

    def convert_namespace_to_omegaconf(args):
        if _TPU_SETTLED.get(id(args)) is not args:
            _settle_tpu(args, sys.argv[1:])
        return convert(args)

    options.parse_args_and_arch = _marked(parse_args_and_arch)
    convert_namespace_to_omegaconf.__doc__ = convert.__doc__
    # fairseq.dataclass.utils itself and every loaded fairseq / fairseq_cli module holding the original by name;
    # modules imported later copy the patched attribute of fairseq.dataclass.utils.
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in ("fairseq", "fairseq_cli"):
            if getattr(module, "convert_namespace_to_omegaconf", None) is convert:
                module.convert_namespace_to_omegaconf = _marked(convert_namespace_to_omegaconf)


_TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _fill_cpu_torchrun_init(cfg, environ=None, cuda_device_count=None):
    """Fill `cfg` (a DistributedTrainingConfig) from torchrun's environment when there is no CUDA device.
    Returns True if it did. A no-op with CUDA devices, without torchrun, for a single worker, or when an init
    method was given."""
    environ = os.environ if environ is None else environ
    cuda_device_count = torch.cuda.device_count() if cuda_device_count is None else cuda_device_count
    if cuda_device_count > 0 or cfg.distributed_init_method is not None or getattr(cfg, "tpu", False):
        return False
    if not all(k in environ for k in _TORCHRUN_VARS) or int(environ["WORLD_SIZE"]) <= 1:
        return False
    cfg.distributed_init_method = "env://"
    cfg.distributed_world_size = int(environ["WORLD_SIZE"])
    cfg.distributed_rank = int(environ["RANK"])
    cfg.device_id = 0  # a CPU worker has no device; LOCAL_RANK > 0 would make fairseq call cuda.set_device
    cfg.distributed_no_spawn = True  # torchrun already started the workers
    return True


def _support_cpu_torchrun():
    """Stock fairseq under `torchrun --nproc_per_node N fairseq-train --cpu --distributed-backend gloo`:
    without `--distributed-world-size` it silently runs N independent jobs into one save dir; with it,
    `ZeroDivisionError` (`rank % torch.cuda.device_count()`); and `--ddp-backend pytorch_ddp` passes
    `device_ids=[0]` to DistributedDataParallel, which rejects that for CPU modules. GPU runs are unchanged."""
    import fairseq.distributed.utils as dist_utils
    import fairseq.models.distributed_fairseq_model as dfm

    infer = dist_utils.infer_init_method
    if getattr(infer, _MARK, False):
        return

    def infer_init_method(cfg, force_distributed=False):
        _fill_cpu_torchrun_init(cfg)
        return infer(cfg, force_distributed)

    dist_utils.infer_init_method = _marked(infer_init_method)

    class DistributedDataParallel(dfm.DistributedDataParallel):
        """torch's DDP, without device_ids/output_device when the module lives on the CPU."""

        def __init__(self, module, device_ids=None, output_device=None, *args, **kwargs):
            if all(p.device.type == "cpu" for p in module.parameters()):
                device_ids = output_device = None
            super().__init__(module, device_ids, output_device, *args, **kwargs)

    dfm.DistributedDataParallel = _marked(DistributedDataParallel)


def _copy_integer_buffers_in_ema():
    """Stock `fairseq.models.ema.EMA.step` does `ema_param.mul_(decay)` on every state entry, which raises for
    int64 buffers (BatchNorm `num_batches_tracked`, OFA's relative-position buckets and `image_position_idx`).
    Like OFA's vendored EMA, copy non-floating-point tensors instead: EMA already copies its `skip_keys`."""
    from fairseq.models.ema import EMA

    init = EMA.__init__
    if getattr(init, _MARK, False):
        return

    def __init__(self, model, *args, **kwargs):
        init(self, model, *args, **kwargs)
        state = self.model.state_dict()
        integer_keys = {k for k, v in state.items() if torch.is_tensor(v) and not torch.is_floating_point(v)}
        self.skip_keys = set(self.skip_keys) | integer_keys

    __init__.__doc__ = init.__doc__
    EMA.__init__ = _marked(__init__)


# (message regex, category, module regex or "" for any). Each one is printed once per run by stock fairseq.
_KNOWN_WARNINGS = (
    (r"hydra\.experimental\.(initialize|compose)\(\) is no longer experimental", UserWarning, r"hydra\."),
    (r"\s*The version_base parameter is not specified", UserWarning, r"hydra\."),
    (r"In 'config': Usage of deprecated keyword in package header '# @package _group_'", UserWarning, r"hydra\."),
    (r"\s*The strict flag in the compose API is deprecated", UserWarning, r"hydra\."),
    # hydra attributes this one to a frame far up the stack ("sys:1", or the caller's caller): no module match.
    (r"\s*'config' is validated against ConfigStore schema with the same name", UserWarning, ""),
    (r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated", FutureWarning, r"fairseq\."),
    (r"'pin_memory' argument is set as true but no accelerator is found", UserWarning, r"torch\.utils\.data"),
    (r"Support for mismatched key_padding_mask and attn_mask is deprecated", UserWarning, r"torch\.nn\."),
)


def _quiet_known_warnings():
    """Hide the deprecation warnings stock fairseq triggers in hydra 1.3 / torch 2.14 (each matched narrowly by
    message and, where hydra reports it correctly, module). `torch.jit.script is deprecated` fires during
    `import fairseq`, before any plugin code runs; scripts silence it with PYTHONWARNINGS."""
    for message, category, module in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def _accept_tsv_file_data():
    """`fairseq-train` lists the `--data` *folder* to look for extra `valid*` files; OFA tasks take
    comma-separated TSV *files* there, which made it fail (`NotADirectoryError`) unless
    `--ignore-unused-valid-subsets` was given. The check now runs only when `data` is a folder."""
    from fairseq.data import data_utils

    check = data_utils.raise_if_valid_subsets_unintentionally_ignored
    if getattr(check, _MARK, False):
        return

    @_marked
    def check_folders_only(train_cfg):
        data = getattr(train_cfg.task, "data", None)
        if data is not None and not os.path.isdir(str(data)):
            return None
        return check(train_cfg)

    data_utils.raise_if_valid_subsets_unintentionally_ignored = check_folders_only


def _one_line_error(exc):
    """The checkpoint error behind `exc` (itself, or what fairseq re-raised it as), if any."""
    from .ema_weights import MissingEMAError

    kinds = (UnsafeCheckpointError, CheckpointReadError, CheckpointMismatchError, MissingEMAError)
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kinds):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _one_line_checkpoint_errors(argv0=None):
    """A stock `fairseq-generate` / `fairseq-validate` / `fairseq-train` that meets an unusable checkpoint prints
    the deep torch / fairseq traceback (for `--restore-file`, fairseq even replaces the reason by "please ensure
    that the architectures match"). In those commands only, print `<command>: error: <one-line reason>` and exit
    with status 1; other exceptions, and Python callers, are unchanged."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    command = os.path.basename(argv0)
    if not (command.startswith("fairseq-") or os.path.basename(os.path.dirname(argv0)) == "fairseq_cli"):
        return
    if getattr(sys.excepthook, _MARK, False) or os.environ.get("BIOMEDGPT_TRACEBACK"):
        return
    previous = sys.excepthook
    name = command if command.startswith("fairseq-") else "fairseq-" + os.path.splitext(command)[0]

    def excepthook(kind, exc, tb):
        reason = _one_line_error(exc)
        if reason is None:
            return previous(kind, exc, tb)
        context = f" ({exc})" if exc is not reason and str(exc) else ""
        sys.stderr.write(f"{name}: error: {reason}{context}\n")
        sys.stderr.flush()

    sys.excepthook = _marked(excepthook)


def _atomic_checkpoint_copies():
    """`fairseq.checkpoint_utils.save_checkpoint` writes the first checkpoint name atomically, then
    `PathManager.copy`s it to the other names (`checkpoint_last.pt`, `checkpoint_best.pt`, ...), and that copy
    writes the destination in place: killed during it, `checkpoint_last.pt` is left truncated and the run cannot
    resume. Local copies now go to `<destination>.tmp`, renamed over the destination when complete."""
    from fairseq.file_io import PathManager

    copy = PathManager.copy
    if getattr(copy, _MARK, False):
        return

    def atomic_copy(src_path, dst_path, overwrite=False):
        if "://" in str(src_path) or "://" in str(dst_path):
            return copy(src_path, dst_path, overwrite)
        if os.path.exists(dst_path) and not overwrite:
            return copy(src_path, dst_path, overwrite)  # the stock error for an existing destination
        tmp = f"{dst_path}.tmp"  # fairseq's own name for its atomic saves: a leftover is overwritten next time
        try:
            shutil.copyfile(src_path, tmp)
            os.replace(tmp, dst_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return True

    atomic_copy.__wrapped__ = copy  # the stock copy, for comparisons
    PathManager.copy = staticmethod(_marked(atomic_copy))


def apply():
    """Apply every adjustment once; later calls do nothing."""
    global _APPLIED
    if _APPLIED:
        return
    _allow_checkpoint_globals()
    _untangle_bf16_from_tpu()
    _support_cpu_torchrun()
    _copy_integer_buffers_in_ema()
    _accept_tsv_file_data()
    _quiet_known_warnings()
    _one_line_checkpoint_errors()
    _atomic_checkpoint_copies()
    _APPLIED = True
