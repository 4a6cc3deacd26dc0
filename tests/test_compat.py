"""Tests for biomedgpt.compat: each adjustment is checked against the stock-fairseq breakage it works around."""
import argparse
import io
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import biomedgpt.compat as compat

compat.apply()

import fairseq.checkpoint_utils as checkpoint_utils  # noqa: E402
import fairseq.distributed.utils as distributed_utils  # noqa: E402
from fairseq import options  # noqa: E402
from fairseq.dataclass.configs import EMAConfig, FairseqConfig  # noqa: E402
from fairseq.models.ema import EMA  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


# --- 1. checkpoint loading ------------------------------------------------------------------------------------


def _fairseq_style_checkpoint():
    """What fairseq/OFA's `save_checkpoint` writes, with the non-tensor objects that real checkpoints hold."""
    return {
        "args": None,
        "cfg": {
            "common": {"seed": 1, "bf16": False},
            "model": argparse.Namespace(_name="ofa_tiny", arch="ofa_tiny", encoder_layers=4, lr=[1e-4]),
            "task": {"_name": "vqa_gen", "data": "a.tsv,b.tsv"},
        },
        "model": {"encoder.weight": torch.randn(3, 2), "decoder.idx": torch.arange(4)},
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": "AdjustLabelSmoothedCrossEntropyCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": np.float64(0.75)},
                "num_updates": 12,
            }
        ],
        "task_state": {},
        "extra_state": {
            "metrics": {},
            "previous_training_time": 3.5,
            "train_iterator": {"epoch": 2, "iterations_in_epoch": 4, "shuffle": True, "version": 2},
            "val_loss": np.float32(1.25),
            "best": np.float64(0.75),
            "ema": {"encoder.weight": torch.zeros(3, 2)},
        },
    }


def test_namespace_and_numpy_checkpoint_loads_weights_only(tmp_path):
    path = str(tmp_path / "checkpoint_last.pt")
    torch.save(_fairseq_style_checkpoint(), path)
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    assert isinstance(state["cfg"].model, argparse.Namespace)
    assert state["cfg"].model.encoder_layers == 4
    assert state["extra_state"]["best"] == np.float64(0.75)
    assert torch.equal(state["model"]["decoder.idx"], torch.arange(4))


def test_numpy_1x_scalar_name_is_allowed():
    """Checkpoints written under numpy 1.x name the scalar constructor `numpy.core.multiarray.scalar`."""
    buffer = io.BytesIO()
    torch.save({"best": np.float64(1.5)}, buffer, _use_new_zipfile_serialization=False)  # protocol-2 text GLOBALs
    raw = buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\nscalar" in raw
    assert torch.load(io.BytesIO(raw)) == {"best": 1.5}


class _RunsShellOnLoad:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_checkpoint_that_would_execute_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pt")
    state = _fairseq_style_checkpoint()
    state["extra_state"]["payload"] = _RunsShellOnLoad(f"echo pwned > {marker}")
    torch.save(state, path)

    with pytest.raises(compat.UnsafeCheckpointError) as info:
        checkpoint_utils.load_checkpoint_to_cpu(path)
    message = str(info.value)
    assert not marker.exists()
    assert "\n" not in message
    assert path in message and f"{os.system.__module__}.system" in message and "execute code" in message
    assert "weights_only=False" not in message  # torch's advice to disable the check is not passed on
    assert info.value.global_name.endswith(f"{os.system.__module__}.system")
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize("kind", ["truncated", "empty", "text"])
def test_unreadable_checkpoint_names_the_file(tmp_path, kind):
    good = tmp_path / "good.pt"
    torch.save(_fairseq_style_checkpoint(), good)
    data = {"truncated": good.read_bytes()[:300], "empty": b"", "text": b"this is not a checkpoint\n" * 20}[kind]
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(data)
    with pytest.raises(compat.CheckpointReadError) as info:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert str(path) in str(info.value) and "truncated or not a PyTorch checkpoint" in str(info.value)


def test_errors_after_reading_are_not_relabelled(tmp_path):
    """Only errors raised inside torch.load become CheckpointReadError; fairseq's own upgrade errors pass."""
    path = tmp_path / "odd.pt"
    torch.save({"model": {}}, path)  # no optimizer_history / best_loss: fairseq's _upgrade_state_dict raises
    with pytest.raises(KeyError):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))


def test_missing_checkpoint_names_the_file(tmp_path):
    path = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        checkpoint_utils.load_checkpoint_to_cpu(path)


# --- 2. --bf16 does not imply --tpu ------------------------------------------------------------------------------

_TRAIN_ARGS = ["--task", "dummy_lm", "--arch", "transformer_lm", "--cpu", "--bf16"]


def _parse(extra=()):
    return options.parse_args_and_arch(options.get_training_parser(), [*_TRAIN_ARGS, *extra])


def test_bf16_without_tpu_flag_keeps_tpu_off():
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = _parse()
    assert args.bf16 and not args.tpu
    cfg = convert_namespace_to_omegaconf(args)
    assert cfg.common.bf16 and not cfg.common.tpu


def test_explicit_tpu_flag_is_kept():
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = _parse(["--tpu"])
    assert args.tpu
    assert convert_namespace_to_omegaconf(args).common.tpu


@pytest.mark.parametrize("given, expected", [([], False), (["--tpu"], True)])
def test_cli_namespace_is_fixed_on_conversion(monkeypatch, given, expected):
    """In `fairseq-train` the plugin is imported inside the running parse, so the namespace reaches the by-name
    `fairseq_cli.train.convert_namespace_to_omegaconf` with `tpu=True`; the command line decides."""
    import fairseq_cli.train

    args = argparse.Namespace(**vars(_parse(given)))  # a namespace the wrapped parser never saw
    args.tpu = True
    monkeypatch.setattr(sys, "argv", ["fairseq-train", *_TRAIN_ARGS, *given])
    assert fairseq_cli.train.convert_namespace_to_omegaconf(args).common.tpu is expected


# --- 3. distributed training on CPU under torchrun ---------------------------------------------------------------

_TORCHRUN_ENV = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def _distributed_cfg():
    return OmegaConf.structured(FairseqConfig()).distributed_training


def test_cpu_torchrun_environment_fills_the_config():
    cfg = _distributed_cfg()
    assert compat._fill_cpu_torchrun_init(cfg, environ=_TORCHRUN_ENV, cuda_device_count=0)
    assert cfg.distributed_init_method == "env://"
    assert (cfg.distributed_world_size, cfg.distributed_rank, cfg.device_id) == (2, 1, 0)
    assert cfg.distributed_no_spawn


@pytest.mark.parametrize(
    "environ, cuda_devices, init_method",
    [
        (_TORCHRUN_ENV, 2, None),  # GPUs present: stock behaviour
        ({}, 0, None),  # not under torchrun
        ({**_TORCHRUN_ENV, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, 0, None),  # a single worker
        (_TORCHRUN_ENV, 0, "tcp://127.0.0.1:1234"),  # explicit --distributed-init-method
    ],
)
def test_cpu_torchrun_fill_leaves_other_cases_alone(environ, cuda_devices, init_method):
    cfg = _distributed_cfg()
    cfg.distributed_init_method = init_method
    before = OmegaConf.to_container(cfg)
    assert not compat._fill_cpu_torchrun_init(cfg, environ=environ, cuda_device_count=cuda_devices)
    assert OmegaConf.to_container(cfg) == before


def test_infer_init_method_uses_torchrun_environment_without_cuda(monkeypatch):
    """Stock: world size 1 → returns silently (N independent jobs); world size 2 → ZeroDivisionError."""
    for key, value in _TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cfg = _distributed_cfg()
    distributed_utils.infer_init_method(cfg)
    assert (cfg.distributed_init_method, cfg.distributed_world_size, cfg.distributed_rank) == ("env://", 2, 1)


def test_ddp_wrapper_accepts_cpu_module(tmp_path):
    """Stock fairseq passes device_ids=[0] and torch's DDP raises ValueError for a CPU module."""
    import torch.distributed as dist
    from fairseq.models import DistributedFairseqModel

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no existing process group")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        args = argparse.Namespace(
            tpu=False, ddp_backend="pytorch_ddp", device_id=0, broadcast_buffers=False, bucket_cap_mb=25,
            find_unused_parameters=False, gradient_as_bucket_view=False, ddp_comm_hook="none",
        )
        wrapped = DistributedFairseqModel(args, nn.Linear(3, 2), dist.group.WORLD, torch.device("cpu"))
        assert wrapped.module.device_ids is None
        wrapped(torch.randn(4, 3)).sum().backward()
    finally:
        dist.destroy_process_group()


# --- 4. EMA with integer buffers --------------------------------------------------------------------------------


class _WithIntBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)  # int64 num_batches_tracked
        self.register_buffer("position_idx", torch.arange(5))

    def forward(self, x):
        return self.bn(self.fc(x))


@pytest.mark.parametrize("ema_fp32", [False, True])
def test_ema_steps_over_integer_buffers(ema_fp32):
    torch.manual_seed(0)
    model = _WithIntBuffers()
    ema = EMA(model, EMAConfig(ema_decay=0.5, ema_fp32=ema_fp32))
    old_weight = model.fc.weight.detach().clone()

    model.train()
    model(torch.randn(8, 3)).sum().backward()
    with torch.no_grad():
        model.fc.weight.add_(1.0)
        model.position_idx.add_(10)
    ema.step(model)

    averaged = ema.get_model()
    assert torch.equal(averaged.position_idx, torch.arange(5) + 10)
    assert averaged.position_idx.dtype == torch.int64
    assert averaged.bn.num_batches_tracked.item() == 1
    assert torch.allclose(averaged.fc.weight, 0.5 * old_weight + 0.5 * model.fc.weight)


# --- 5. warnings ------------------------------------------------------------------------------------------------


def test_known_fairseq_warnings_are_filtered(monkeypatch):
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = _parse()
    with warnings.catch_warnings(record=True) as unfiltered:
        warnings.simplefilter("always")
        convert_namespace_to_omegaconf(args)
    assert any("hydra" in str(w.message) for w in unfiltered)  # the check below is not vacuous

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        monkeypatch.setattr(compat, "_APPLIED", False)
        compat.apply()  # installs the filters again (the other wrappers stay as they are)
        convert_namespace_to_omegaconf(args)
        warnings.warn("an unrelated warning", UserWarning)
    assert [str(w.message) for w in seen] == ["an unrelated warning"]


# --- apply() ---------------------------------------------------------------------------------------------------


def _patched_objects():
    import fairseq.dataclass.utils as dc_utils
    import fairseq.models.distributed_fairseq_model as dfm
    import fairseq_cli.train

    return (
        checkpoint_utils.load_checkpoint_to_cpu, options.parse_args_and_arch, dc_utils.convert_namespace_to_omegaconf,
        fairseq_cli.train.convert_namespace_to_omegaconf, distributed_utils.infer_init_method,
        dfm.DistributedDataParallel, EMA.__init__,
    )


def test_apply_is_idempotent(monkeypatch):
    before = _patched_objects()
    assert all(getattr(obj, compat._MARK, False) for obj in before)
    compat._quiet_known_warnings()  # pytest restores the warning filters around each test
    n_safe, n_filters = len(torch.serialization.get_safe_globals()), len(warnings.filters)

    compat.apply()
    monkeypatch.setattr(compat, "_APPLIED", False)  # even a forced second application wraps nothing twice
    compat.apply()

    assert _patched_objects() == before
    assert len(torch.serialization.get_safe_globals()) == n_safe
    assert len(warnings.filters) == n_filters
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ


def test_tsv_file_data_needs_no_ignore_unused_valid_subsets(tmp_path):
    from types import SimpleNamespace

    from fairseq.data import data_utils

    files = f"{tmp_path / 'train.tsv'},{tmp_path / 'valid.tsv'}"
    cfg = SimpleNamespace(
        task=SimpleNamespace(data=files),
        dataset=SimpleNamespace(ignore_unused_valid_subsets=False, combine_valid_subsets=None,
                                disable_validation=False, valid_subset="valid"))
    data_utils.raise_if_valid_subsets_unintentionally_ignored(cfg)  # stock: NotADirectoryError / FileNotFoundError
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "valid1.bin").write_text("")
    cfg.task.data = str(folder)
    with pytest.raises(ValueError, match="will be ignored"):  # folders keep the stock check
        data_utils.raise_if_valid_subsets_unintentionally_ignored(cfg)
