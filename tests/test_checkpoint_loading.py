"""Released-layout checkpoints load under torch 2.14 through stock fairseq, and nothing unsafe is unpickled."""
import argparse
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from biomedgpt.cli.model_check import save_released_layout
from conftest import build

SMALL = ["--encoder-layers=1", "--decoder-layers=1", "--encoder-embed-dim=64", "--decoder-embed-dim=64",
         "--encoder-ffn-embed-dim=128", "--decoder-ffn-embed-dim=128", "--encoder-attention-heads=2",
         "--decoder-attention-heads=2"]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    model, task, args = build("ofa_tiny", SMALL)
    assert isinstance(args, argparse.Namespace)  # the legacy model config, as in released checkpoints
    path = str(tmp_path_factory.mktemp("ckpt") / "released.pt")
    save_released_layout(model, args, path, with_ema=True)
    return path, model


def test_load_model_ensemble_and_task(small_checkpoint):
    from fairseq import checkpoint_utils

    path, model = small_checkpoint
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path])
    assert isinstance(cfg.model, argparse.Namespace) or cfg.model._name == "ofa_tiny"
    loaded = models[0].state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert len(task.source_dictionary) == 59457


def test_ema_weights_in_checkpoint_are_readable(small_checkpoint):
    from fairseq import checkpoint_utils

    path, model = small_checkpoint
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    assert set(state["extra_state"]["ema"]) == set(model.state_dict())


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/biomedgpt_exploit_marker",))


def test_pickled_callable_is_refused(small_checkpoint, tmp_path):
    from fairseq import checkpoint_utils
    from biomedgpt.compat import UnsafeCheckpointError

    path, _ = small_checkpoint
    state = torch.load(path, weights_only=True)
    state["extra_state"]["evil"] = _Exploit()
    bad = str(tmp_path / "evil.pt")
    torch.save(state, bad)
    if os.path.exists("/tmp/biomedgpt_exploit_marker"):
        os.remove("/tmp/biomedgpt_exploit_marker")
    with pytest.raises(UnsafeCheckpointError, match="evil.pt"):
        checkpoint_utils.load_model_ensemble_and_task([bad])
    assert not os.path.exists("/tmp/biomedgpt_exploit_marker")


PLUGIN = textwrap.dedent('''
    """A user-dir used only by the tests: the ofa task with a few synthetic text pairs."""
    import torch
    import biomedgpt  # noqa: F401
    from biomedgpt.tasks.ofa_task import OFAConfig, OFATask
    from fairseq.data import LanguagePairDataset
    from fairseq.tasks import register_task


    @register_task("ofa_synthetic_pairs", dataclass=OFAConfig)
    class SyntheticPairs(OFATask):
        def load_dataset(self, split, epoch=1, combine=False, **kwargs):
            d = self.source_dictionary
            g = torch.Generator().manual_seed(0)
            src = [torch.cat([torch.randint(4, 1000, (6,), generator=g), torch.tensor([d.eos()])]) for _ in range(8)]
            tgt = [torch.cat([torch.randint(4, 1000, (4,), generator=g), torch.tensor([d.eos()])]) for _ in range(8)]
            self.datasets[split] = LanguagePairDataset(src, [7] * 8, d, tgt, [5] * 8, d, left_pad_source=False)
''')


@pytest.mark.slow
def test_fairseq_train_restore_file(small_checkpoint, tmp_path):
    """`fairseq-train --restore-file` takes a released-layout checkpoint; with lr 0 the weights stay identical."""
    path, model = small_checkpoint
    plugin = tmp_path / "synthetic_plugin"
    plugin.mkdir()
    (plugin / "__init__.py").write_text(PLUGIN)
    save_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(tmp_path), "--user-dir", str(plugin),
           "--task", "ofa_synthetic_pairs", "--arch", "ofa_tiny", *SMALL, "--criterion", "cross_entropy",
           "--optimizer", "adam", "--lr", "0", "--max-update", "1", "--batch-size", "4", "--cpu",
           "--restore-file", path, "--reset-optimizer", "--reset-dataloader", "--reset-meters",
           "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--disable-validation", "--log-format", "simple",
           "--num-workers", "0", "--encoder-normalize-before", "--decoder-normalize-before",
           "--share-all-embeddings", "--share-decoder-input-output-embed", "--layernorm-embedding",
           "--patch-layernorm-embedding", "--code-layernorm-embedding", "--add-type-embedding", "--scale-attn",
           "--scale-fc", "--scale-heads", "--disable-entangle"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert f"Loaded checkpoint {path}" in log
    trained = torch.load(save_dir / "checkpoint_last.pt", weights_only=True)["model"]
    for key, value in model.state_dict().items():
        if value.dtype.is_floating_point and "running_" not in key:
            assert torch.equal(trained[key], value), key
