"""Loading older or differently sized checkpoints (REFERENCE §9, `upgrade_state_dict_named`).

fairseq's `BaseFairseqModel.load_state_dict(state_dict, strict=True, model_cfg=None)` calls
`self.upgrade_state_dict(state_dict)` (which walks every submodule's `upgrade_state_dict_named`) in place and then
`nn.Module.load_state_dict`. The tests build "checkpoints" by editing the state dict of a small model built with one
seed and load them into a model built with another seed, so anything not taken from the checkpoint is visible.
"""
import copy
import os

import pytest
import torch
from torch import nn

from conftest import build

from biomedgpt.models.position import code_position_index

D, H, LAYERS, FFN = 64, 2, 2, 128
SMALL = [
    f"--encoder-layers={LAYERS}", f"--decoder-layers={LAYERS}", f"--encoder-embed-dim={D}", f"--decoder-embed-dim={D}",
    f"--encoder-ffn-embed-dim={FFN}", f"--decoder-ffn-embed-dim={FFN}", f"--encoder-attention-heads={H}",
    f"--decoder-attention-heads={H}",
]
V = 59457  # the full OFA dictionary
TIED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
PAD, BOS, EOS = 1, 0, 2


def build_small(*extra, seed=0):
    torch.manual_seed(seed)
    model, _task, args = build("ofa_tiny", [*SMALL, *extra])
    model.eval()
    return model, args


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 50000, (2, 6), generator=g)
    src[:, 0], src[:, -1] = BOS, EOS
    src[1, -2:], src[1, -3] = PAD, EOS
    prev = torch.randint(4, 50000, (2, 5), generator=g)
    prev[:, 0], prev[1, -1] = BOS, PAD
    return {"src_tokens": src, "src_lengths": torch.tensor([6, 4]), "prev_output_tokens": prev,
            "patch_images": torch.randn(2, 3, 32, 32, generator=g), "patch_masks": torch.tensor([True, True])}


@torch.no_grad()
def logits(model, batch, **kwargs):
    return model(**batch, **kwargs)[0]


def checkpoint_of(model):
    """A detached copy of the state dict, as a checkpoint file would hold it (tied tensors separate)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def source():
    return build_small(seed=0)


@pytest.fixture(scope="module")
def target():
    return build_small(seed=1)


@pytest.fixture(scope="module")
def batch():
    return make_batch()


def fresh(model):
    return copy.deepcopy(model)


def test_models_differ_and_plain_load_copies_everything(source, target, batch):
    src, _ = source
    dst = fresh(target[0])
    assert (logits(src, batch) - logits(dst, batch)).abs().max() > 1e-3
    dst.load_state_dict(checkpoint_of(src), strict=True, model_cfg=target[1])
    torch.testing.assert_close(logits(dst, batch), logits(src, batch), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- token embeddings
def test_fewer_embedding_rows_are_appended(source, target, batch):
    src, _ = source
    dst = fresh(target[0])
    old = dst.encoder.embed_tokens.weight.detach().clone()
    state = checkpoint_of(src)
    for key in TIED:
        state[key] = state[key][: V - 5].clone()

    upgraded = dict(state)
    dst.upgrade_state_dict(upgraded)
    rows = [upgraded[key] for key in TIED]
    assert all(r.shape == (V, D) for r in rows)
    assert torch.equal(rows[0], rows[1]) and torch.equal(rows[0], rows[2])  # same new rows for the tied copies

    dst.load_state_dict(state, strict=True, model_cfg=target[1])
    weight = dst.encoder.embed_tokens.weight
    assert weight.shape == (V, D)
    assert dst.decoder.embed_tokens.weight is weight and dst.decoder.output_projection.weight is weight
    assert torch.equal(weight[: V - 5], src.encoder.embed_tokens.weight[: V - 5])
    new = weight[V - 5:].detach()
    assert not torch.equal(new, old[V - 5:]) and new.abs().min() > 0
    assert 0.5 * D ** -0.5 < new.std() < 2 * D ** -0.5  # N(0, D^-0.5)
    assert torch.isfinite(logits(dst, batch)).all()


def test_more_embedding_rows_are_truncated(source, target, batch):
    src, _ = source
    dst = fresh(target[0])
    state = checkpoint_of(src)
    extra = torch.randn(3, D)
    for key in TIED:
        state[key] = torch.cat([state[key], extra])
    dst.load_state_dict(state, strict=True)
    assert torch.equal(dst.encoder.embed_tokens.weight, src.encoder.embed_tokens.weight)
    torch.testing.assert_close(logits(dst, batch), logits(src, batch), rtol=0, atol=0)


def test_new_rows_from_registered_answer_tokens(source, target):
    src, _ = source
    dst = fresh(target[0])
    dst.ans_tensor_list = [torch.tensor([10, 11]), torch.tensor([12, 13, 14])]
    state = checkpoint_of(src)
    for key in TIED:
        state[key] = state[key][: V - 2].clone()
    dst.load_state_dict(state, strict=True)
    weight, table = dst.encoder.embed_tokens.weight, src.encoder.embed_tokens.weight
    torch.testing.assert_close(weight[V - 2], table[10:12].mean(0))
    torch.testing.assert_close(weight[V - 1], table[12:15].mean(0))
    assert torch.equal(weight[: V - 2], table[: V - 2])


def test_new_rows_take_the_checkpoint_dtype(source, target):
    src, _ = source
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in checkpoint_of(src).items()}
    for key in TIED:
        state[key] = state[key][: V - 4].clone()
    target[0].upgrade_state_dict(state)
    for key in TIED:
        assert state[key].shape == (V, D) and state[key].dtype == torch.float16, key


# ---------------------------------------------------------------------------------------------- missing keys
MISSING_FRAGMENTS = ("attn_ln", "ffn_layernorm", "rel_pos_table_list")


def test_missing_keys_are_filled_from_the_current_model(source):
    src, _ = source
    dst, args = build_small("--encoder-prompt", "--decoder-prompt", "--encoder-prompt-length=2",
                            "--decoder-prompt-length=2", seed=2)
    before = checkpoint_of(dst)
    state = {k: v for k, v in checkpoint_of(src).items() if not any(f in k for f in MISSING_FRAGMENTS)}
    dropped = [k for k in before if k not in state]
    assert any("self_attn_ln" in k for k in dropped) and any("cross_attn_ln" in k for k in dropped)
    assert any(".attn_ln." in k for k in dropped) and any("ffn_layernorm" in k for k in dropped)
    assert any("token_rel_pos_table_list" in k for k in dropped)
    assert any("image_rel_pos_table_list" in k for k in dropped)
    assert any("encoder_prompt_encoder" in k for k in dropped) and any("decoder_prompt_encoder" in k for k in dropped)

    with pytest.raises(RuntimeError, match="Missing key"):  # plain torch loading would refuse it
        nn.Module.load_state_dict(copy.deepcopy(dst), dict(state), strict=True)

    dst.load_state_dict(dict(state), strict=True, model_cfg=args)
    after = dst.state_dict()
    for key in dropped:
        assert torch.equal(after[key], before[key]), key
    for key, value in state.items():
        assert torch.equal(after[key], value), key
    # the rel-pos tables of the two models really differ, so "kept" is not "loaded by accident"
    key = "encoder.token_rel_pos_table_list.0.weight"
    assert not torch.equal(src.state_dict()[key], before[key])


# ---------------------------------------------------------------------------------------------- legacy names
def _attention_prefixes():
    prefixes = []
    for i in range(LAYERS):
        prefixes += [f"encoder.layers.{i}.self_attn", f"decoder.layers.{i}.self_attn", f"decoder.layers.{i}.encoder_attn"]
    return prefixes


def test_legacy_fused_in_proj_is_split(source, target, batch):
    src, _ = source
    dst = fresh(target[0])
    state = checkpoint_of(src)
    for prefix in _attention_prefixes():
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{prefix}.{proj}.{kind}") for proj in ("q_proj", "k_proj", "v_proj")]
            state[f"{prefix}.in_proj_{kind}"] = torch.cat(parts, dim=0)
    assert not any(".q_proj." in k for k in state)

    upgraded = dict(state)
    dst.upgrade_state_dict(upgraded)
    assert not any("in_proj" in k for k in upgraded)
    for prefix in _attention_prefixes():
        for proj in ("q_proj", "k_proj", "v_proj"):
            assert torch.equal(upgraded[f"{prefix}.{proj}.weight"], src.state_dict()[f"{prefix}.{proj}.weight"])

    dst.load_state_dict(state, strict=True)
    torch.testing.assert_close(logits(dst, batch), logits(src, batch), rtol=0, atol=0)


LEGACY_NORMS = {
    "encoder": {"self_attn_layer_norm": "0", "final_layer_norm": "1"},
    "decoder": {"self_attn_layer_norm": "0", "encoder_attn_layer_norm": "1", "final_layer_norm": "2"},
}


def test_legacy_layer_norms_are_renamed(source, target, batch):
    src = fresh(source[0])
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # make every LayerNorm non-trivial, so a layer norm left at its init would show
        for module in src.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
    state = checkpoint_of(src)
    renamed = 0
    for stack, names in LEGACY_NORMS.items():
        for i in range(LAYERS):
            for name, index in names.items():
                for kind in ("weight", "bias"):
                    state[f"{stack}.layers.{i}.layer_norms.{index}.{kind}"] = state.pop(f"{stack}.layers.{i}.{name}.{kind}")
                    renamed += 1
    assert renamed == LAYERS * 2 * 5

    upgraded = dict(state)
    target[0].upgrade_state_dict(upgraded)
    assert not any("layer_norms" in k for k in upgraded)
    assert torch.equal(upgraded["decoder.layers.1.encoder_attn_layer_norm.weight"],
                       src.state_dict()["decoder.layers.1.encoder_attn_layer_norm.weight"])
    assert torch.equal(upgraded["encoder.layers.0.final_layer_norm.bias"],
                       src.state_dict()["encoder.layers.0.final_layer_norm.bias"])

    dst = fresh(target[0])
    dst.load_state_dict(state, strict=True)
    torch.testing.assert_close(logits(dst, batch), logits(src, batch), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- position tables
def test_image_position_idx_comes_from_the_current_model(source):
    src, _ = source
    dst, args = build_small("--code-image-size=256", seed=3)
    own = dst.decoder.image_position_idx.clone()
    assert torch.equal(own, code_position_index(32, 42, 1026))
    assert not torch.equal(own, src.decoder.image_position_idx)
    state = checkpoint_of(src)
    dst.load_state_dict(state, strict=True, model_cfg=args)
    assert torch.equal(dst.decoder.image_position_idx, own)
    assert torch.equal(dst.encoder.embed_tokens.weight, src.encoder.embed_tokens.weight)


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_smaller_image_position_table_gets_rows_appended(source, target, stack):
    src, _ = source
    dst = fresh(target[0])
    small_rows = 20 * 20 + 1  # a checkpoint trained with --image-bucket-size 20
    key = f"{stack}.embed_image_positions.weight"
    state = checkpoint_of(src)
    state[key] = state[key][:small_rows].clone()
    dst.load_state_dict(state, strict=True)
    weight = dst.get_submodule(stack).embed_image_positions.weight.detach()
    assert weight.shape == (42 * 42 + 1, D)
    assert torch.equal(weight[:small_rows], src.get_submodule(stack).embed_image_positions.weight[:small_rows])
    new = weight[small_rows:]
    assert abs(new.mean()) < 0.05 and 0.9 * D ** -0.5 < new.std() < 1.1 * D ** -0.5


def test_image_position_tables_of_a_smaller_bucket_checkpoint(target):
    small, _ = build_small("--image-bucket-size=20", seed=4)
    state = checkpoint_of(small)
    assert state["encoder.embed_image_positions.weight"].shape == (401, D)
    target[0].upgrade_state_dict(state)
    for stack in ("encoder", "decoder"):
        key = f"{stack}.embed_image_positions.weight"
        assert state[key].shape == (1765, D)
        assert torch.equal(state[key][:401], small.state_dict()[key])


# ---------------------------------------------------------------------------------------------- classification heads
def _heads_state(model, name):
    return {k: v.clone() for k, v in model.classification_heads[name].state_dict().items()}


def test_classification_heads_unknown_dropped_missing_added(source, target):
    src = fresh(source[0])
    src.register_classification_head("keep", num_classes=3)
    src.register_classification_head("unknown", num_classes=2)
    src.register_classification_head("resized", num_classes=6)
    dst = fresh(target[0])
    dst.register_classification_head("keep", num_classes=3)
    dst.register_classification_head("new", num_classes=4)
    dst.register_classification_head("resized", num_classes=5)
    new_before, resized_before = _heads_state(dst, "new"), _heads_state(dst, "resized")
    assert not torch.equal(_heads_state(src, "keep")["out_proj.weight"], _heads_state(dst, "keep")["out_proj.weight"])

    state = checkpoint_of(src)
    upgraded = dict(state)
    dst.upgrade_state_dict(upgraded)
    assert not any(k.startswith("classification_heads.unknown.") for k in upgraded)

    dst.load_state_dict(state, strict=True)
    assert set(dst.classification_heads) == {"keep", "new", "resized"}
    for key, value in _heads_state(src, "keep").items():
        assert torch.equal(dst.classification_heads["keep"].state_dict()[key], value), key
    for name, before in (("new", new_before), ("resized", resized_before)):
        for key, value in before.items():
            assert torch.equal(dst.classification_heads[name].state_dict()[key], value), (name, key)
    assert dst.classification_heads["resized"].out_proj.out_features == 5


def test_load_checkpoint_heads_registers_checkpoint_heads(source, target):
    src = fresh(source[0])
    src.register_classification_head("unknown", num_classes=2, inner_dim=16)
    dst = fresh(target[0])
    dst.args.load_checkpoint_heads = True
    dst.load_state_dict(checkpoint_of(src), strict=True)
    head = dst.classification_heads["unknown"]
    assert head.out_proj.out_features == 2 and head.dense.out_features == 16
    for key, value in _heads_state(src, "unknown").items():
        assert torch.equal(head.state_dict()[key], value), key


# ---------------------------------------------------------------------------------------------- end to end
def test_released_layout_checkpoint_with_old_keys_loads_through_fairseq(source, tmp_path, batch):
    """An older-style checkpoint (fewer vocabulary rows, no NormFormer LNs, fused in_proj) through checkpoint_utils."""
    from fairseq import checkpoint_utils
    from biomedgpt.cli.model_check import save_released_layout

    src, args = source
    path = os.path.join(tmp_path, "old.pt")
    save_released_layout(src, args, path, with_ema=False)
    checkpoint = torch.load(path, weights_only=False)
    state = checkpoint["model"]
    for key in TIED:
        state[key] = state[key][: V - 3].clone()
    for key in [k for k in state if "ffn_layernorm" in k]:
        del state[key]
    prefix = "decoder.layers.0.encoder_attn"
    state[f"{prefix}.in_proj_weight"] = torch.cat([state.pop(f"{prefix}.{p}.weight") for p in ("q_proj", "k_proj", "v_proj")])
    state[f"{prefix}.in_proj_bias"] = torch.cat([state.pop(f"{prefix}.{p}.bias") for p in ("q_proj", "k_proj", "v_proj")])
    torch.save(checkpoint, path)

    models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([path])
    loaded = models[0]
    loaded.eval()
    assert loaded.encoder.embed_tokens.weight.shape == (V, D)
    assert torch.equal(loaded.encoder.embed_tokens.weight[: V - 3], src.encoder.embed_tokens.weight[: V - 3])
    assert torch.equal(loaded.state_dict()[f"{prefix}.k_proj.weight"], src.state_dict()[f"{prefix}.k_proj.weight"])
    # the ffn layer norms are at their init (ones/zeros) in both models: outputs agree except the 3 new rows
    out, ref = logits(loaded, batch), logits(src, batch)
    torch.testing.assert_close(out[..., : V - 3], ref[..., : V - 3], rtol=1e-5, atol=1e-5)
