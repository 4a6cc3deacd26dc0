"""GumbelVQ (biomedgpt.vqgan): state-dict layout of the released config, safe checkpoint loading, encode/decode,
Gumbel sampling, and hand-checks of the building blocks."""
import importlib.util
import logging
import math
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import SPEC_DIR

from biomedgpt.vqgan import (CheckpointMismatchError, CheckpointReadError, GumbelVQ, UnsafeCheckpointError,
                             codes_from_logits, default_config_path, to_pil_images)
from biomedgpt.vqgan.modules import AttnBlock, Downsample, ResnetBlock, Upsample

REPO = os.path.join(os.path.dirname(__file__), "..")
REAL_CONFIG = os.path.join(REPO, "configs", "vqgan_gumbel_f8_8192.yaml")
KEYS_TSV = os.path.join(SPEC_DIR, "vqgan", "gumbel_f8_8192.keys.tsv")

TINY = {"model": {"target": "taming.models.vqgan.GumbelVQ", "params": {
    "embed_dim": 32, "n_embed": 64, "kl_weight": 1.0e-8,
    "ddconfig": {"double_z": False, "z_channels": 32, "resolution": 128, "in_channels": 3, "out_ch": 3, "ch": 32,
                 "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [16], "dropout": 0.0},
    "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"}}}}


def write_tiny_config(folder) -> str:
    """A small GumbelVQ config (f=8, 64 codes, width 32-64) for fast encode/decode tests."""
    path = os.path.join(str(folder), "tiny_vq.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(TINY, handle)
    return path


def tiny_model(folder, seed=0) -> GumbelVQ:
    torch.manual_seed(seed)
    return GumbelVQ.from_config(write_tiny_config(folder))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("vq"))


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(3)
    return torch.rand(3, 3, 128, 128, generator=generator) * 2 - 1


# ------------------------------------------------------------------------------------------------ released layout
def test_default_config_is_the_repo_copy():
    assert os.path.realpath(default_config_path()) == os.path.realpath(REAL_CONFIG)


def test_real_config_parameter_counts():
    with torch.device("meta"):
        model = GumbelVQ.from_config(REAL_CONFIG)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(model) == 68_995_971
    assert (count(model.encoder), count(model.decoder), count(model.quantize)) == (26_345_728, 38_316_163, 4_202_496)
    assert count(model.quant_conv) == count(model.post_quant_conv) == 65_792
    assert not list(model.buffers())
    assert model.downsample_factor == 8


def test_real_config_state_dict_equals_released_key_list():
    if not os.path.exists(KEYS_TSV):
        pytest.skip(f"{KEYS_TSV} not found (set BIOMEDGPT_SPEC_DIR to the shared/spec folder)")
    with open(KEYS_TSV) as handle:
        rows = [tuple(line.rstrip("\n").split("\t")) for line in handle][1:]
    with torch.device("meta"):
        model = GumbelVQ.from_config(REAL_CONFIG)
    got = [(key, ",".join(map(str, value.shape)), str(value.dtype).replace("torch.", ""))
           for key, value in model.state_dict().items()]
    assert len(rows) == 301
    assert got == rows


def test_from_config_rejects_other_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  params:\n    embed_dim: 4\n")
    with pytest.raises(ValueError, match="bad.yaml.*model.params"):
        GumbelVQ.from_config(path)


# ------------------------------------------------------------------------------------------------ checkpoints
def _with_throwaway_module(build):
    """Run `build(module)` while a module that nothing can import afterwards is registered (Lightning stand-in)."""
    name = "pytorch_lightning_standin_for_vq_tests"
    module = types.ModuleType(name)

    class ModelCheckpoint:
        def __init__(self):
            self.monitor, self.best_model_path = "val/rec_loss", "/logs/last.ckpt"

    class AttributeDict(dict):
        pass

    for cls in (ModelCheckpoint, AttributeDict):
        cls.__module__, cls.__qualname__ = name, cls.__name__
        setattr(module, cls.__name__, cls)
    sys.modules[name] = module
    try:
        return build(module)
    finally:
        del sys.modules[name]
        assert importlib.util.find_spec(name) is None


def write_lightning_ckpt(path, state_dict, extra=None):
    """A checkpoint in PyTorch-Lightning 1.x layout: callbacks keyed by a class the loader cannot import."""

    def build(module):
        hparams = module.AttributeDict(embed_dim=32, n_embed=64)
        checkpoint = {
            "epoch": 7, "global_step": 1234, "pytorch-lightning_version": "1.0.8",
            "callbacks": {module.ModelCheckpoint: {"best_model_score": torch.tensor(0.25),
                                                   "best_model_path": "/logs/epoch=7.ckpt",
                                                   "instance": module.ModelCheckpoint()}},
            "optimizer_states": [{"state": {0: {"step": 3, "exp_avg": torch.zeros(4)}},
                                  "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "params": [0]}]}],
            "lr_schedulers": [], "hparams_name": "kwargs", "hyper_parameters": hparams,
            "state_dict": dict(state_dict),
        }
        checkpoint.update(extra or {})
        torch.save(checkpoint, path)

    _with_throwaway_module(build)
    return str(path)


def _state_with_loss(model):
    state = dict(model.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.ones(2, 3)
    state["loss.perceptual_loss.net.slice1.0.bias"] = torch.ones(2)
    return state


def test_lightning_checkpoint_loads_and_reports_extras(tmp_path, tiny, caplog):
    path = write_lightning_ckpt(tmp_path / "last.ckpt", _state_with_loss(tiny))
    with pytest.raises(pickle.UnpicklingError):  # the plain weights-only load refuses it ...
        torch.load(path, weights_only=True)
    other = tiny_model(tmp_path, seed=1)
    assert not torch.equal(other.encoder.conv_in.weight, tiny.encoder.conv_in.weight)
    with caplog.at_level(logging.INFO, logger="biomedgpt.vqgan"):
        assert other.load_checkpoint(path) is other  # ... the loader does not
    for key, value in tiny.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "loss.* (2)" in messages and "ModelCheckpoint" in messages
    assert all(str(path) in record.getMessage() for record in caplog.records)


def test_bare_state_dict_loads(tmp_path, tiny):
    path = tmp_path / "weights.pt"
    torch.save(tiny.state_dict(), path)
    other = tiny_model(tmp_path, seed=2).load_checkpoint(path)
    assert torch.equal(other.quantize.embed.weight, tiny.quantize.embed.weight)


def test_missing_key_and_wrong_shape_fail_clearly(tmp_path, tiny):
    state = _state_with_loss(tiny)
    del state["decoder.up.0.block.1.conv2.bias"]
    path = write_lightning_ckpt(tmp_path / "missing.ckpt", state)
    with pytest.raises(CheckpointMismatchError, match=r"missing\.ckpt: key 'decoder\.up\.0\.block\.1\.conv2\.bias' "
                                                      r"is missing$"):
        tiny_model(tmp_path).load_checkpoint(path)

    state = _state_with_loss(tiny)
    state["quantize.proj.weight"] = torch.zeros(65, 32, 1, 1)
    path = write_lightning_ckpt(tmp_path / "shape.ckpt", state)
    with pytest.raises(CheckpointMismatchError, match=r"shape\.ckpt: key 'quantize\.proj\.weight' has shape "
                                                      r"\[65, 32, 1, 1\], expected \[64, 32, 1, 1\]"):
        tiny_model(tmp_path).load_checkpoint(path)


def test_truncated_checkpoint_is_one_line_error(tmp_path, tiny):
    path = write_lightning_ckpt(tmp_path / "cut.ckpt", tiny.state_dict())
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError) as info:
        tiny_model(tmp_path).load_checkpoint(path)
    assert str(path) in str(info.value) and "truncated" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        tiny_model(tmp_path).load_checkpoint(tmp_path / "nowhere.ckpt")


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _CallsTorchLoad:
    def __reduce__(self):
        return torch.serialization.load, ("/nonexistent",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_callables_never_run(tmp_path, tiny):
    marker = tmp_path / "pwned"
    # inside a torch checkpoint: os.system becomes an inert placeholder, the weights still load
    path = write_lightning_ckpt(tmp_path / "evil.ckpt", tiny.state_dict(),
                                extra={"callbacks": {"x": _RunsCommand(f"touch {marker}")}})
    other = tiny_model(tmp_path, seed=5).load_checkpoint(path)
    assert torch.equal(other.decoder.conv_out.weight, tiny.decoder.conv_out.weight)
    assert not marker.exists()
    # plain (non-torch) pickles with a modern protocol: refused (unreadable / tensors pickled through
    # torch.storage._load_from_bytes, which is not on the allow-list), nothing runs
    for name, state in (("raw.pkl", tiny.state_dict()), ("raw_plain.pkl", {"a": 1})):
        with open(tmp_path / name, "wb") as handle:
            pickle.dump({"state_dict": state, "x": _RunsCommand(f"touch {marker}")}, handle, protocol=5)
        with pytest.raises((CheckpointReadError, UnsafeCheckpointError), match=name):
            tiny_model(tmp_path).load_checkpoint(tmp_path / name)
        assert not marker.exists()
    # torch functions outside the weights-only allow-list are refused, not replaced
    path = write_lightning_ckpt(tmp_path / "torchcall.ckpt", tiny.state_dict(), extra={"y": _CallsTorchLoad()})
    with pytest.raises(UnsafeCheckpointError, match=r"torchcall\.ckpt.*torch\.serialization\.load"):
        tiny_model(tmp_path).load_checkpoint(path)


# ------------------------------------------------------------------------------------------------ encode / decode
def test_encode_shapes_range_determinism_and_batch_independence(tiny, images):
    codes = tiny.encode_to_codes(images)
    assert codes.dtype == torch.int64 and codes.shape == (3, 16, 16)
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    assert len(codes.unique()) > 1
    assert torch.equal(codes, tiny.encode_to_codes(images))
    for i in range(len(images)):
        assert torch.equal(tiny.encode_to_codes(images[i:i + 1])[0], codes[i])
    manual = tiny.quantize.proj(tiny.quant_conv(tiny.encoder(images))).argmax(1)
    assert torch.equal(manual, codes)
    assert not torch.is_grad_enabled() or tiny.code_logits(images).grad_fn is None
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny.encode_to_codes(torch.zeros(1, 3, 60, 64))


def test_decode_matches_one_hot_reference_and_pil_conversion(tiny):
    codes = torch.tensor([[[0, 5], [63, 5]], [[1, 2], [3, 4]]])
    decoded = tiny.decode_codes(codes)
    assert decoded.shape == (2, 3, 16, 16) and decoded.dtype == torch.float32
    with torch.no_grad():  # the reference's decode_code: one-hot product with the codebook
        one_hot = F.one_hot(codes, 64).float()
        z_q = torch.einsum("bhwn,nc->bchw", one_hot, tiny.quantize.embed.weight)
        expected = tiny.decoder(tiny.post_quant_conv(z_q))
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=1e-5)
    images = tiny.decode_to_pil(codes)
    assert [image.size for image in images] == [(16, 16), (16, 16)] and images[0].mode == "RGB"
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tiny.decode_codes(torch.tensor([[[64]]]))


def test_to_pil_images_clamps_and_truncates():
    values = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0])
    batch = values.view(1, 1, 1, 6).expand(1, 3, 1, 6)
    array = np.asarray(to_pil_images(batch)[0])
    assert array.shape == (1, 6, 3) and array.dtype == np.uint8
    assert array[0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]


def test_gumbel_sampling_law():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, 8, 8, generator=generator)
    winners = logits.argmax(1)
    assert torch.equal(codes_from_logits(logits), winners)
    confident = logits + 1e4 * F.one_hot(winners, 50).permute(0, 3, 1, 2)
    assert torch.equal(codes_from_logits(confident, sample=True, generator=generator), winners)
    drawn = codes_from_logits(logits, sample=True, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(drawn, winners)
    assert torch.equal(drawn, codes_from_logits(logits, sample=True, generator=torch.Generator().manual_seed(1)))
    # frequencies follow softmax(logits)
    probs = torch.tensor([0.7, 0.2, 0.1])
    many = probs.log().view(1, 3, 1, 1).expand(1, 3, 100, 200)
    draws = codes_from_logits(many, sample=True, generator=torch.Generator().manual_seed(2))
    frequencies = torch.bincount(draws.flatten(), minlength=3).float() / draws.numel()
    torch.testing.assert_close(frequencies, probs, atol=0.01, rtol=0)


def test_model_sampling_differs_only_at_small_margins(tiny, images):
    logits = tiny.code_logits(images[:1])
    drawn = tiny.encode_to_codes(images[:1], sample=True, generator=torch.Generator().manual_seed(4))
    best = logits.argmax(1)
    assert not torch.equal(drawn, best)
    margin = logits.max(1).values - logits.gather(1, drawn.unsqueeze(1)).squeeze(1)
    assert float(margin.max()) < 20.0  # P(Gumbel difference > 20) ~ 2e-9
    sharp = tiny_model_copy(tiny)
    with torch.no_grad():
        sharp.quantize.proj.weight.mul_(1e5)
        sharp.quantize.proj.bias.mul_(1e5)
    assert torch.equal(sharp.encode_to_codes(images[:1], sample=True, generator=torch.Generator().manual_seed(4)),
                       sharp.encode_to_codes(images[:1]))


def tiny_model_copy(model):
    copy = GumbelVQ(model.ddconfig, model.n_embed, model.embed_dim).eval()
    copy.load_state_dict(model.state_dict())
    return copy


# ------------------------------------------------------------------------------------------------ building blocks
def test_downsample_pads_right_and_bottom_only():
    block = Downsample(1)
    with torch.no_grad():
        block.conv.weight.copy_(torch.arange(9.0).view(1, 1, 3, 3))
        block.conv.bias.fill_(0.5)
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    padded = np.zeros((5, 5))
    padded[:4, :4] = x[0, 0].numpy()
    kernel = np.arange(9.0).reshape(3, 3)
    expected = [[(padded[2 * i:2 * i + 3, 2 * j:2 * j + 3] * kernel).sum() + 0.5 for j in range(2)] for i in range(2)]
    assert block(x)[0, 0].tolist() == expected


def test_upsample_is_nearest_then_conv():
    block = Upsample(1)
    with torch.no_grad():
        block.conv.weight.zero_()
        block.conv.weight[0, 0, 1, 1] = 1.0  # identity kernel
        block.conv.bias.zero_()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert block(x)[0, 0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]


def test_attn_block_matches_explicit_softmax_attention():
    torch.manual_seed(0)
    block = AttnBlock(32)
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0, 0.3)
    x = torch.randn(2, 32, 3, 5)
    with torch.no_grad():
        n = F.group_norm(x, 32, block.norm.weight, block.norm.bias, eps=1e-6)

        def conv(layer, t):
            return torch.einsum("oc,bcn->bon", layer.weight[:, :, 0, 0], t.flatten(2)) + layer.bias[None, :, None]

        q, k, v = conv(block.q, n), conv(block.k, n), conv(block.v, n)
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(32), dim=-1)
        out = torch.einsum("bij,bcj->bci", weights, v)
        expected = x + conv(block.proj_out, out.view(2, 32, 3, 5)).view(2, 32, 3, 5)
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_resnet_block_formula_and_shortcut():
    torch.manual_seed(1)
    block = ResnetBlock(32, 64)
    x = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        h = block.conv1(F.silu(F.group_norm(x, 32, block.norm1.weight, block.norm1.bias, 1e-6)))
        h = block.conv2(F.silu(F.group_norm(h, 32, block.norm2.weight, block.norm2.bias, 1e-6)))
        torch.testing.assert_close(block(x), block.nin_shortcut(x) + h)
    assert not hasattr(ResnetBlock(32, 32), "nin_shortcut")
