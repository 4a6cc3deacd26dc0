"""Model options of the `ofa` model (REFERENCE §1.1-1.13): ResNet variants and freezing, drop path, freezing and
parameter-efficient tuning (BitFit, adapters, prefix prompts), NormFormer switches, patch sampling, position
interpolation, classification heads, image-code rows, incremental decoding, reordering, low precision and the
attention kernel switch.

Models are small (2+2 layers, D=64, 2 heads) and built through fairseq's own parser (`conftest.build`); images are
32 px (2x2 patches) unless a test needs more patches.
"""
import copy
import random
import re
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from conftest import build

import biomedgpt.models as bm
from biomedgpt.models.layers import DropPath
from biomedgpt.models.position import image_grid_ids
from biomedgpt.models.resnet import build_resnet

D, H, LAYERS, FFN = 64, 2, 2, 128
SMALL = [
    f"--encoder-layers={LAYERS}", f"--decoder-layers={LAYERS}", f"--encoder-embed-dim={D}", f"--decoder-embed-dim={D}",
    f"--encoder-ffn-embed-dim={FFN}", f"--decoder-ffn-embed-dim={FFN}", f"--encoder-attention-heads={H}",
    f"--decoder-attention-heads={H}",
]
PAD, BOS, EOS = 1, 0, 2
RESNET50_NORMS = 1 + 3 * (3 + 4 + 6) + 3  # stem + 3 per bottleneck + one per downsample (stages 1-3)


def build_small(*extra, seed=0):
    torch.manual_seed(seed)
    model, _task, args = build("ofa_tiny", [*SMALL, *extra])
    model.eval()
    return model


def build_plain(*extra, seed=0):
    """Like `build_small` but without the BiomedGPT script flags of conftest (no --scale-*, no --disable-entangle)."""
    from biomedgpt.cli.model_check import build_from_argv

    torch.manual_seed(seed)
    model, _task, _args = build_from_argv(["DATA", "--task=ofa", "--arch=ofa_tiny", *SMALL, *extra])
    model.eval()
    return model


def make_batch(bsz=2, src_len=6, tgt_len=5, image=32, seed=0, pad_src=True, pad_tgt=True):
    """Source/target with BOS/EOS, row 1 right-padded (source by 2, target by 1), random images."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 50000, (bsz, src_len), generator=g)
    src[:, 0], src[:, -1] = BOS, EOS
    lengths = torch.full((bsz,), src_len)
    if pad_src and bsz > 1:
        src[1, -2:] = PAD
        src[1, -3] = EOS
        lengths[1] = src_len - 2
    prev = torch.randint(4, 50000, (bsz, tgt_len), generator=g)
    prev[:, 0] = BOS
    if pad_tgt and bsz > 1:
        prev[1, -1] = PAD
    images = torch.randn(bsz, 3, image, image, generator=g)
    return {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev, "patch_images": images,
            "patch_masks": torch.ones(bsz, dtype=torch.bool)}


def rows(batch, index):
    """The sub-batch `index` (a list of row numbers) of a batch dict."""
    idx = torch.tensor(index)
    return {k: v.index_select(0, idx) for k, v in batch.items()}


def encoder_input(batch):
    return {k: v for k, v in batch.items() if k != "prev_output_tokens"}


@torch.no_grad()
def logits(model, batch, **kwargs):
    return model(**batch, **kwargs)[0]


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def drop_rate(module):
    """Drop-path probability of a residual branch (0 when the layer has none)."""
    return float(getattr(module, "drop_prob", 0.0)) if isinstance(module, DropPath) else 0.0


@pytest.fixture(scope="module")
def base():
    return build_small()


@pytest.fixture(scope="module")
def batch():
    return make_batch()


# ---------------------------------------------------------------------------------------------- ResNet options
@pytest.fixture(scope="module")
def frozen():
    return build_small("--freeze-resnet", seed=1)


def test_freeze_resnet_replaces_every_batchnorm(base, frozen):
    trunk = frozen.encoder.embed_images
    frozen_norms = [m for m in trunk.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen_norms) == RESNET50_NORMS
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in trunk.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in base.encoder.embed_images.modules()) == RESNET50_NORMS

    keys = frozen.state_dict().keys()
    assert not [k for k in keys if k.startswith("encoder.embed_images.") and "num_batches_tracked" in k]
    assert "encoder.embed_images.bn1.running_var" in keys and "encoder.embed_images.layer3.5.bn3.weight" in keys
    assert "encoder.embed_images.bn1.num_batches_tracked" in base.state_dict()

    params = dict(trunk.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    # only convolutions are parameters; the frozen BN affine/statistics are buffers
    assert all(isinstance(trunk.get_submodule(n.rsplit(".", 1)[0]), nn.Conv2d) for n in params)
    assert len(params) == RESNET50_NORMS  # one conv per norm


def test_freeze_resnet_statistics_do_not_move_in_train_mode(frozen):
    model = copy.deepcopy(frozen)
    before = {k: v.clone() for k, v in model.encoder.embed_images.state_dict().items()}
    model.train()
    with torch.no_grad():
        model.encoder.embed_images(torch.randn(2, 3, 32, 32) * 3 + 1)
    after = model.encoder.embed_images.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_freeze_resnet_weights_makes_the_trunk_a_fixed_feature_extractor(base, batch):
    """`--freeze-resnet --freeze-resnet-weights`: no trunk weight is trained, the rest of the model is, and a
    training step leaves the trunk exactly as it was (no gradient reaches it, BatchNorm statistics stay)."""
    model = build_small("--freeze-resnet", "--freeze-resnet-weights", seed=1)
    trunk = {f"encoder.embed_images.{n}" for n, _ in model.encoder.embed_images.named_parameters()}
    assert trunk and not trunk & trainable(model)
    assert trainable(model) == {n for n in trainable(base) if not n.startswith("encoder.embed_images.")}
    before = {k: v.clone() for k, v in model.encoder.embed_images.state_dict().items()}
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**batch)[0].float().logsumexp(-1).mean().backward()
    assert all(p.grad is None for p in model.encoder.embed_images.parameters())
    assert model.encoder.image_proj.weight.grad is not None and model.encoder.image_proj.weight.grad.abs().sum() > 0
    optimizer.step()
    after = model.encoder.embed_images.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_freeze_resnet_loads_unfrozen_checkpoint_and_matches_eval_batchnorm(base, frozen):
    reference = copy.deepcopy(base)
    g = torch.Generator().manual_seed(3)
    for module in reference.encoder.embed_images.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=g) + 0.5
            module.bias.data = torch.randn(n, generator=g) * 0.1
            module.running_mean = torch.randn(n, generator=g) * 0.1
            module.running_var = torch.rand(n, generator=g) + 0.5
            module.num_batches_tracked.fill_(7)
    state = reference.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in state)

    model = copy.deepcopy(frozen)
    model.load_state_dict(dict(state), strict=True)
    bn = model.encoder.embed_images.layer2[1].bn2
    assert torch.equal(bn.running_var, state["encoder.embed_images.layer2.1.bn2.running_var"])
    assert torch.equal(bn.weight, state["encoder.embed_images.layer2.1.bn2.weight"])

    reference.eval()
    model.eval()
    images = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        expected = reference.encoder.embed_images(images)
        got = model.encoder.embed_images(images)
    # FrozenBatchNorm2d folds the statistics into scale/shift: equal up to float rounding through 13 blocks
    scale = expected.abs().max()
    assert scale > 1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)
    batch = make_batch(seed=4)
    torch.testing.assert_close(logits(model, batch), logits(reference, batch), rtol=1e-4, atol=1e-4)


def test_sync_bn_uses_sync_batchnorm_with_eps_1e3():
    model = build_small("--sync-bn")
    norms = [m for m in model.encoder.embed_images.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == RESNET50_NORMS
    assert all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert all(m.eps == pytest.approx(1e-3) and m.momentum == pytest.approx(0.1) for m in norms)


def _stage_blocks(model):
    trunk = model.encoder.embed_images
    assert not hasattr(trunk, "layer4")
    return [len(getattr(trunk, f"layer{i}")) for i in (1, 2, 3)]


def test_default_tiny_trunk_is_resnet50(base):
    assert base.args.resnet_type == "resnet50"
    assert _stage_blocks(base) == [3, 4, 6]


@pytest.mark.parametrize("kind,blocks", [("resnet101", [3, 4, 23]), ("resnet152", [3, 8, 36])])
def test_resnet_type_block_counts(kind, blocks):
    model = build_small(f"--resnet-type={kind}")
    assert _stage_blocks(model) == blocks
    with torch.no_grad():
        out = model.encoder.embed_images(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 1024, 2, 2)


def test_bad_resnet_type_is_rejected(capsys):
    with pytest.raises(SystemExit):
        build_small("--resnet-type=resnet18")
    assert "invalid choice: 'resnet18'" in capsys.readouterr().err
    args = Namespace(resnet_type="resnet18", sync_bn=False, freeze_resnet=False, resnet_model_path=None,
                     resnet_drop_path_rate=0.0)
    with pytest.raises(ValueError, match="resnet18"):
        build_resnet(args)


@pytest.fixture(scope="module")
def torchvision_resnet_file(tmp_path_factory):
    """A torchvision resnet50 state dict (with layer4.* and fc.*) with every float tensor randomised."""
    import torchvision

    torch.manual_seed(5)
    state = torchvision.models.resnet50(weights=None).state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = torch.rand_like(value) + 0.5 if key.endswith("running_var") else torch.randn_like(value)
    assert any(k.startswith("fc.") for k in state) and any(k.startswith("layer4.") for k in state)
    path = tmp_path_factory.mktemp("resnet") / "resnet50.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("freeze", [False, True])
def test_resnet_model_path_loads_trunk(torchvision_resnet_file, freeze):
    path, state = torchvision_resnet_file
    model = build_small(f"--resnet-model-path={path}", *(["--freeze-resnet"] if freeze else []))
    trunk = model.encoder.embed_images.state_dict()
    assert not any(k.startswith(("fc.", "layer4.")) for k in trunk)
    checked = 0
    for key, value in trunk.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, state[key]), key
        checked += 1
    assert checked > 200


def test_resnet_model_path_missing_keys_names_the_file(torchvision_resnet_file, tmp_path):
    _path, state = torchvision_resnet_file
    broken = {k: v for k, v in state.items() if not k.startswith("layer3.")}
    path = tmp_path / "broken_resnet.pth"
    torch.save(broken, path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        build_small(f"--resnet-model-path={path}")


def test_checkpoint_does_not_need_its_resnet_model_path_file(torchvision_resnet_file, tmp_path):
    """A checkpoint trained with `--resnet-model-path` stores the path in its arguments; fairseq-generate, -validate
    and biomedgpt.inference rebuild the model with `from_checkpoint=True` and must not read (or need) that file."""
    from biomedgpt.cli.model_check import build_from_argv

    _path, state = torchvision_resnet_file
    path = tmp_path / "moved_away.pth"
    argv = ["DATA", "--task=ofa", "--arch=ofa_tiny", *SMALL, f"--resnet-model-path={path}"]
    with pytest.raises(FileNotFoundError, match="moved_away"):
        build_from_argv(argv)  # training from scratch: the file is needed
    torch.save(state, path)
    model, task, cfg = build_from_argv(argv)
    path.unlink()
    rebuilt = task.build_model(cfg, from_checkpoint=True)  # what checkpoint loading calls
    assert cfg.resnet_model_path is None
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.encoder.embed_images.conv1.weight, state["conv1.weight"])


# ---------------------------------------------------------------------------------------------- drop path
@pytest.fixture(scope="module")
def drop_path_model():
    return build_small("--encoder-layers=3", "--decoder-layers=3", "--encoder-drop-path-rate=0.2",
                       "--decoder-drop-path-rate=0.4", "--resnet-drop-path-rate=0.3")


def test_drop_path_rates_follow_linspace(drop_path_model, base):
    encoder, decoder = drop_path_model.encoder, drop_path_model.decoder
    assert [drop_rate(layer.drop_path) for layer in encoder.layers] == pytest.approx([0.0, 0.1, 0.2])
    assert [drop_rate(layer.drop_path) for layer in decoder.layers] == pytest.approx([0.0, 0.2, 0.4])
    assert not isinstance(encoder.layers[0].drop_path, DropPath) or drop_rate(encoder.layers[0].drop_path) == 0
    for stage, n in (("layer1", 3), ("layer2", 4), ("layer3", 6)):
        blocks = getattr(encoder.embed_images, stage)
        expected = torch.linspace(0, 0.3, n).tolist()
        expected[0] = 0.0
        assert [drop_rate(block.drop_path) for block in blocks] == pytest.approx(expected), stage
    # the default is no drop path anywhere
    assert not any(isinstance(m, DropPath) for m in base.modules())


def test_drop_path_module_drops_whole_samples():
    module = DropPath(0.5)
    module.train()
    torch.manual_seed(0)
    out = module(torch.ones(3, 64, 4))
    per_sample = out.transpose(0, 1).reshape(64, -1)
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)  # one decision per sample (dim 1)
    assert set(per_sample[:, 0].tolist()) == {0.0, 2.0}  # kept samples are rescaled by 1/(1-p)
    module.eval()
    x = torch.randn(3, 5, 4)
    assert torch.equal(module(x), x)


def test_drop_path_is_random_in_train_mode_only(drop_path_model):
    model = copy.deepcopy(drop_path_model)
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    x = torch.randn(5, 8, D)
    enc = torch.randn(6, 8, D)
    trunk = model.encoder.embed_images
    first_enc, last_enc = model.encoder.layers[0], model.encoder.layers[2]
    last_dec = model.decoder.layers[2]

    def twice(fn):
        with torch.no_grad():
            return fn(), fn()

    model.train()
    a, b = twice(lambda: trunk(images))
    assert not torch.allclose(a, b)
    a, b = twice(lambda: last_enc(x, None))
    assert not torch.allclose(a, b)
    a, b = twice(lambda: first_enc(x, None))  # layer 0 has no drop path: deterministic even in train mode
    assert torch.equal(a, b)
    a, b = twice(lambda: last_dec(x, enc, None)[0])
    assert not torch.allclose(a, b)
    batch = make_batch(bsz=4)
    a, b = twice(lambda: model(**batch)[0])
    assert not torch.allclose(a, b)

    model.eval()
    for fn in (lambda: trunk(images), lambda: last_enc(x, None), lambda: last_dec(x, enc, None)[0],
               lambda: model(**batch)[0]):
        a, b = twice(fn)
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- freezing / tuning
def test_all_parameters_trainable_by_default(base):
    assert all(p.requires_grad for p in base.parameters())


@pytest.mark.parametrize("flag", ["--freeze-encoder-embedding", "--freeze-decoder-embedding"])
def test_freeze_embedding_freezes_shared_table_only(flag):
    model = build_small(flag)
    shared = model.encoder.embed_tokens.weight
    assert model.decoder.embed_tokens.weight is shared and model.decoder.output_projection.weight is shared
    assert not shared.requires_grad
    frozen_names = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen_names == {"encoder.embed_tokens.weight"}


def test_bitfit_trains_only_layer_norm_and_fc_biases():
    model = build_small("--bitfit")
    names = dict(model.named_parameters())
    for name, param in names.items():
        expected = ("layer_norm" in name and "bias" in name) or ("fc" in name and "bias" in name)
        assert param.requires_grad == expected, name
    for name in ("encoder.layers.0.fc1.bias", "decoder.layers.1.fc2.bias", "encoder.layers.1.self_attn_layer_norm.bias",
                 "decoder.layers.0.encoder_attn_layer_norm.bias", "decoder.layer_norm.bias"):
        assert names[name].requires_grad, name
    for name in ("encoder.layers.0.fc1.weight", "encoder.layers.0.self_attn_layer_norm.weight",
                 "encoder.layers.0.self_attn.q_proj.bias", "encoder.embed_tokens.weight",
                 "encoder.embed_images.conv1.weight", "encoder.layernorm_embedding.bias"):
        assert not names[name].requires_grad, name


@pytest.fixture(scope="module")
def adapter_model():
    return build_small("--adapter", "--adapter-dim=8", seed=2)


def test_adapter_shapes_and_freezing(adapter_model):
    model = adapter_model
    layers = list(model.encoder.layers) + list(model.decoder.layers)
    assert len(layers) == 2 * LAYERS
    state = model.state_dict()
    for stack in ("encoder", "decoder"):
        for i in range(LAYERS):
            p = f"{stack}.layers.{i}.adapter."
            assert state[p + "down_proj.weight"].shape == (8, D)
            assert state[p + "down_proj.bias"].shape == (8,)
            assert state[p + "up_proj.weight"].shape == (D, 8)
            assert state[p + "up_proj.bias"].shape == (D,)
    assert not model.encoder.embed_tokens.weight.requires_grad
    # --adapter without prompts freezes only the (shared) embedding
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == {"encoder.embed_tokens.weight"}


def test_adapter_is_residual(base, adapter_model, batch):
    model = copy.deepcopy(adapter_model)
    missing, unexpected = torch.nn.Module.load_state_dict(model, base.state_dict(), strict=False)
    assert not unexpected and missing and all(".adapter." in k for k in missing)
    for layer in list(model.encoder.layers) + list(model.decoder.layers):
        nn.init.zeros_(layer.adapter.up_proj.weight)
        nn.init.zeros_(layer.adapter.up_proj.bias)
    expected = logits(base, batch)
    torch.testing.assert_close(logits(model, batch), expected, rtol=1e-5, atol=1e-5)
    # a non-zero up projection changes the output: the adapter is on the path
    with torch.no_grad():
        model.decoder.layers[0].adapter.up_proj.weight.normal_(std=0.5)
    assert (logits(model, batch) - expected).abs().max() > 1e-3


PROMPT_CASES = [("encoder", False), ("encoder", True), ("decoder", False), ("decoder", True)]


@pytest.mark.parametrize("side,projection", PROMPT_CASES)
def test_prefix_prompts(side, projection, batch):
    flags = [f"--{side}-prompt", f"--{side}-prompt-length=3"] + ([f"--{side}-prompt-projection"] if projection else [])
    model = build_small(*flags)
    prefix = f"{side}.{side}_prompt_encoder."
    state = model.state_dict()
    out_dim = LAYERS * 2 * D
    if projection:
        assert state[prefix + "embedding.weight"].shape == (3, D)
        assert state[prefix + "trans.0.weight"].shape == (2 * D, D)  # prompt dim defaults to 2 * embed dim
        assert state[prefix + "trans.0.bias"].shape == (2 * D,)
        assert state[prefix + "trans.2.weight"].shape == (out_dim, 2 * D)
        assert state[prefix + "trans.2.bias"].shape == (out_dim,)
    else:
        assert state[prefix + "embedding.weight"].shape == (3, out_dim)
        assert not any(k.startswith(prefix + "trans") for k in state)
    other = "decoder" if side == "encoder" else "encoder"
    assert not any(k.startswith(f"{other}.{other}_prompt_encoder.") for k in state)

    names = trainable(model)
    assert names and names == {n for n, _ in model.named_parameters() if n.startswith(prefix)}

    with torch.no_grad():
        enc = model.encoder(**encoder_input(batch))
    num_patches, src_len = 4, batch["src_tokens"].size(1)
    assert enc["encoder_padding_mask"][0].shape == (2, num_patches + src_len)
    assert enc["encoder_padding_mask"][0][1].tolist() == [False] * (num_patches + src_len - 2) + [True, True]
    assert enc["encoder_out"][0].shape == (num_patches + src_len, 2, D)

    out = logits(model, batch)
    assert out.shape == (2, batch["prev_output_tokens"].size(1), 59457) and torch.isfinite(out).all()
    # padding is still masked with prefix keys present: the padded row equals that row alone, unpadded
    single = rows(batch, [1])
    single["src_tokens"] = single["src_tokens"][:, :-2]
    single["prev_output_tokens"] = single["prev_output_tokens"][:, :-1]
    torch.testing.assert_close(logits(model, single)[0], out[1, :-1], rtol=1e-4, atol=1e-4)

    with torch.no_grad():
        getattr(model, side).get_submodule(f"{side}_prompt_encoder").embedding.weight.add_(
            torch.randn(state[prefix + "embedding.weight"].shape))
    assert (logits(model, batch) - out).abs().max() > 1e-3


def test_prompts_with_adapter_train_prompts_and_adapters():
    model = build_small("--encoder-prompt", "--decoder-prompt", "--encoder-prompt-length=3",
                        "--decoder-prompt-length=3", "--adapter", "--adapter-dim=8")
    expected = {n for n, _ in model.named_parameters()
                if "_prompt_encoder." in n or ".adapter." in n}
    assert len([n for n in expected if ".adapter." in n]) == 2 * LAYERS * 4
    assert len([n for n in expected if "_prompt_encoder." in n]) == 2
    assert trainable(model) == expected


# ---------------------------------------------------------------------------------------------- NormFormer switches
def test_scale_switches_add_their_parameters(base, batch):
    plain = build_plain()
    plain_keys = plain.state_dict().keys()
    for fragment in ("c_attn", "w_resid", "attn_ln", "ffn_layernorm"):
        assert not any(fragment in k for k in plain_keys), fragment
    keys = base.state_dict()
    for i in range(LAYERS):
        assert keys[f"encoder.layers.{i}.self_attn.c_attn"].shape == (H,)
        assert keys[f"decoder.layers.{i}.self_attn.c_attn"].shape == (H,)
        assert keys[f"decoder.layers.{i}.encoder_attn.c_attn"].shape == (H,)
    assert not any("w_resid" in k for k in keys)

    model = build_small("--scale-resids")
    state = model.state_dict()
    for stack in ("encoder", "decoder"):
        for i in range(LAYERS):
            assert torch.equal(state[f"{stack}.layers.{i}.w_resid"], torch.ones(D))
    out = logits(model, batch)
    with torch.no_grad():
        model.encoder.layers[1].w_resid.fill_(2.0)
    changed = logits(model, batch)
    assert (changed - out).abs().max() > 1e-3
    with torch.no_grad():
        model.encoder.layers[1].w_resid.fill_(1.0)
        model.decoder.layers[0].self_attn.c_attn[0] = 3.0
    assert (logits(model, batch) - out).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- patches and positions
def test_sample_patch_num(base):
    batch = make_batch(image=64)  # 4x4 = 16 patches
    src_len = batch["src_tokens"].size(1)
    with torch.no_grad():
        full = base.encoder(**encoder_input(batch))
        random.seed(0)
        sampled = base.encoder(**encoder_input(batch), sample_patch_num=5)
        random.seed(0)
        out = base(**batch, sample_patch_num=5)[0]
    assert full["encoder_out"][0].shape[0] == 16 + src_len
    assert sampled["encoder_out"][0].shape == (5 + src_len, 2, D)
    assert sampled["encoder_padding_mask"][0].shape == (2, 5 + src_len)
    assert sampled["encoder_padding_mask"][0][1, -2:].all() and not sampled["encoder_padding_mask"][0][:, :-2].any()
    pos_full, pos = full["position_embeddings"][0], sampled["position_embeddings"][0]
    assert pos.shape == (2, 5 + src_len, D)
    torch.testing.assert_close(pos[:, 5:], pos_full[:, 16:])
    for b in range(2):
        # every sampled patch carries the position embedding of one distinct original patch
        distance = torch.cdist(pos[b, :5], pos_full[b, :16])
        nearest = distance.argmin(1)
        assert distance.min(1).values.max() < 1e-4
        assert len(set(nearest.tolist())) == 5
    assert out.shape == (2, batch["prev_output_tokens"].size(1), 59457)


def test_image_grid_ids_are_flattened_row_major():
    expected = [r * 42 + c + 1 for r in range(3) for c in range(4)]
    assert image_grid_ids(3, 4, 42).tolist() == expected


@pytest.fixture(scope="module")
def interp_model():
    return build_small("--interpolate-position", "--orig-patch-image-size=64")


def _image_pos(model, size):
    images = torch.randn(1, 3, size, size)
    src = torch.tensor([[BOS, 100, EOS]])
    with torch.no_grad():
        enc = model.encoder(src, torch.tensor([3]), patch_images=images)
    side = size // 16
    return enc["position_embeddings"][0][0, : side * side]


def test_interpolate_position(interp_model):
    model, enc = interp_model, interp_model.encoder
    assert enc.args.interpolate_position and enc.args.orig_patch_image_size == 64
    table = enc.embed_image_positions.weight.detach()

    def plain_positions(side):
        ids = torch.tensor([r * 42 + c + 1 for r in range(side) for c in range(side)])
        return enc.image_pos_ln(table[ids])

    with torch.no_grad():
        old = table[torch.tensor([r * 42 + c + 1 for r in range(4) for c in range(4)])]
        grid = old.reshape(1, 4, 4, D).permute(0, 3, 1, 2)
        new = F.interpolate(grid, size=(8, 8), mode="bilinear").permute(0, 2, 3, 1).reshape(64, D)
        expected_interp = enc.image_pos_ln(new)
        expected_plain = plain_positions(8)

    got = _image_pos(model, 128)  # 8x8 patches > (64 // 16)^2
    torch.testing.assert_close(got, expected_interp, rtol=1e-5, atol=1e-5)
    assert (got - expected_plain).abs().max() > 1e-2
    # images not larger than the original size are not interpolated
    with torch.no_grad():
        torch.testing.assert_close(_image_pos(model, 64), plain_positions(4), rtol=1e-5, atol=1e-5)

    batch = encoder_input(make_batch(image=128))
    with torch.no_grad():
        with_interp = enc(**batch)["encoder_out"][0]
    model.encoder.args.interpolate_position = False
    try:
        torch.testing.assert_close(_image_pos(model, 128), expected_plain, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            without = enc(**batch)["encoder_out"][0]
    finally:
        model.encoder.args.interpolate_position = True
    assert (with_interp - without).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- classification head
def test_classification_head_reads_last_non_pad_position(base, batch):
    model = copy.deepcopy(base)
    model.register_classification_head("cls", num_classes=3)
    model.eval()
    head = model.classification_heads["cls"]
    assert head.out_proj.out_features == 3
    with torch.no_grad():
        out, _ = model(**batch, classification_head_name="cls")
        features, _ = model(**batch, features_only=True)
        assert features.shape == (2, 5, D)
        expected = torch.stack([head(features[0, 4]), head(features[1, 3])])  # row 1 ends with one pad
        wrong = head(features[1, 4])
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, expected)
    assert (out[1] - wrong).abs().max() > 1e-5


# ---------------------------------------------------------------------------------------------- image-code rows
@pytest.fixture(scope="module")
def entangled():
    """Without --disable-entangle the decoder adds (text or image) absolute positions to its input."""
    return build_plain("--scale-attn", "--scale-fc", "--scale-heads", seed=3)


@pytest.mark.parametrize("which", ["base", "entangled"])
def test_mixed_code_masks_match_rows_alone(which, base, entangled):
    model = base if which == "base" else entangled
    assert model.decoder.add_positions_to_input == (which == "entangled")
    batch = make_batch(seed=6, tgt_len=6)
    mixed = logits(model, batch, code_masks=torch.tensor([True, False]))
    code_row = logits(model, rows(batch, [0]), code_masks=torch.tensor([True]))
    text_row = logits(model, rows(batch, [1]), code_masks=torch.tensor([False]))
    torch.testing.assert_close(mixed[0], code_row[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mixed[1], text_row[0], rtol=1e-4, atol=1e-4)
    # code_masks all False is the same as no code_masks, and the code path really differs from the text path
    torch.testing.assert_close(logits(model, rows(batch, [1]))[0], text_row[0], rtol=1e-5, atol=1e-5)
    as_text = logits(model, rows(batch, [0]), code_masks=torch.tensor([False]))
    assert (as_text - code_row).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- incremental decoding
@torch.no_grad()
def step_by_step(model, encoder_out, prev, code_masks=None, state=None, start=1):
    state = {} if state is None else state
    steps = []
    for t in range(start, prev.size(1) + 1):
        out, _ = model.decoder(prev[:, :t], code_masks=code_masks, encoder_out=encoder_out, incremental_state=state)
        assert out.size(1) == 1
        steps.append(out[:, -1])
    return torch.stack(steps, 1), state


@pytest.fixture(scope="module")
def decoder_prompt_model():
    return build_small("--decoder-prompt", "--decoder-prompt-length=3", "--encoder-prompt",
                       "--encoder-prompt-length=2", seed=4)


@pytest.mark.parametrize("case", ["text", "text-padded", "codes", "mixed", "prompts", "prompts-padded"])
def test_incremental_decoding_matches_full_forward(case, base, decoder_prompt_model):
    """`-padded`: the target of row 1 ends with a pad token, so a key padding mask enters the cached state."""
    model = decoder_prompt_model if case.startswith("prompts") else base
    batch = make_batch(seed=7, tgt_len=7, pad_tgt=case.endswith("-padded"))
    code_masks = {"codes": torch.tensor([True, True]), "mixed": torch.tensor([True, False])}.get(case)
    with torch.no_grad():
        encoder_out = model.encoder(**encoder_input(batch))
        full, _ = model.decoder(batch["prev_output_tokens"], code_masks=code_masks, encoder_out=encoder_out)
    steps, _ = step_by_step(model, encoder_out, batch["prev_output_tokens"], code_masks)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)


def test_reorder_incremental_state_matches_decoding_from_scratch(base):
    batch = make_batch(seed=8, tgt_len=5, pad_tgt=False)
    prev = batch["prev_output_tokens"]
    new_order = torch.tensor([1, 0])
    with torch.no_grad():
        encoder_out = base.encoder(**encoder_input(batch))
    _, state = step_by_step(base, encoder_out, prev[:, :2])
    encoder_out = base.encoder.reorder_encoder_out(encoder_out, new_order)
    base.decoder.reorder_incremental_state_scripting(state, new_order)
    continued, _ = step_by_step(base, encoder_out, prev.index_select(0, new_order), state=state, start=3)

    swapped = rows(batch, [1, 0])
    with torch.no_grad():
        scratch_out = base.encoder(**encoder_input(swapped))
    scratch, _ = step_by_step(base, scratch_out, swapped["prev_output_tokens"])
    torch.testing.assert_close(continued, scratch[:, 2:], rtol=1e-4, atol=1e-4)


def test_reorder_incremental_state_with_per_row_positions(base):
    """With sampled patches every row has its own encoder position embeddings (and cached cross position keys)."""
    batch = make_batch(seed=9, tgt_len=5, image=64, pad_tgt=False)
    prev = batch["prev_output_tokens"]
    new_order = torch.tensor([1, 0])
    random.seed(1)
    with torch.no_grad():
        encoder_out = base.encoder(**encoder_input(batch), sample_patch_num=6)
    pos = encoder_out["position_embeddings"][0]
    assert not torch.allclose(pos[0], pos[1])
    _, state = step_by_step(base, encoder_out, prev[:, :2])
    reordered = base.encoder.reorder_encoder_out(encoder_out, new_order)
    base.decoder.reorder_incremental_state_scripting(state, new_order)
    continued, _ = step_by_step(base, reordered, prev.index_select(0, new_order), state=state, start=3)
    scratch, _ = step_by_step(base, reordered, prev.index_select(0, new_order))
    torch.testing.assert_close(continued, scratch[:, 2:], rtol=1e-4, atol=1e-4)


def test_reorder_encoder_out_selects_every_entry(base):
    batch = make_batch(seed=10, image=64)
    random.seed(2)
    with torch.no_grad():
        encoder_out = base.encoder(**encoder_input(batch), return_all_hiddens=True, sample_patch_num=4)
    assert len(encoder_out["encoder_states"]) == LAYERS + 1
    pos = encoder_out["position_embeddings"][0]
    assert not torch.allclose(pos[0], pos[1])
    new_order = torch.tensor([1, 0, 1])
    reordered = base.encoder.reorder_encoder_out(encoder_out, new_order)
    assert set(reordered) == set(encoder_out)
    batch_dim = {"encoder_out": 1, "encoder_states": 1}
    for key, values in encoder_out.items():
        assert len(reordered[key]) == len(values), key
        for old, new in zip(values, reordered[key]):
            torch.testing.assert_close(new, old.index_select(batch_dim.get(key, 0), new_order), rtol=0, atol=0)
    assert reordered["position_embeddings"][0].shape[0] == 3
    assert reordered["encoder_out"][0].shape[1] == 3


# ---------------------------------------------------------------------------------------------- precision / kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_model_accepts_float32_images(dtype, base, batch):
    model = copy.deepcopy(base).to(dtype)
    assert model.encoder.embed_images.conv1.weight.dtype == dtype
    assert batch["patch_images"].dtype == torch.float32
    out = logits(model, batch)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    reference = logits(base, batch)
    assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(11)
    model = build("ofa_tiny")[0]
    model.eval()
    return model


def test_attention_impl_switch_gives_same_logits(tiny, monkeypatch):
    batch = make_batch(seed=12, image=64, src_len=7, tgt_len=6)
    batch["patch_masks"] = torch.tensor([True, False])  # row 1: image patches masked as padding
    code_masks = torch.tensor([False, True])
    calls = []
    original_sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return original_sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    default = bm.get_attention_impl()
    try:
        bm.set_attention_impl("eager")
        assert bm.get_attention_impl() == "eager"
        eager = logits(tiny, batch, code_masks=code_masks)
        assert not calls
        bm.set_attention_impl("sdpa")
        assert bm.get_attention_impl() == "sdpa"
        sdpa = logits(tiny, batch, code_masks=code_masks)
        assert calls
    finally:
        bm.set_attention_impl(default)
    assert bm.get_attention_impl() == default
    assert torch.isfinite(eager).all()
    torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-5)


def test_attention_impl_rejects_unknown_names():
    default = bm.get_attention_impl()
    with pytest.raises(ValueError, match="flash"):
        bm.set_attention_impl("flash")
    assert bm.get_attention_impl() == default


def test_alignment_layer_returns_cross_attention_weights(base, batch):
    with torch.no_grad():
        _, extra = base(**batch, alignment_layer=LAYERS - 1)
    attn = extra["attn"][0]
    src_total = 4 + batch["src_tokens"].size(1)
    assert attn.shape == (2, batch["prev_output_tokens"].size(1), src_total)
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:2]))
    assert attn[1, :, -2:].abs().max() == 0  # padded source positions get no weight


@pytest.mark.parametrize("rows", [1, 2, 8, 9])
def test_output_layer_matches_plain_linear_for_every_row_count(base, rows):
    features = torch.randn(rows, 1, base.decoder.embed_dim)
    expected = F.linear(features, base.decoder.output_projection.weight)
    got = base.decoder.output_layer(features)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
