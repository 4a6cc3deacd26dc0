"""Exactness against the reference: ofa_tiny with the deterministic fill reproduces `tiny_forward.pt`."""
import os

import pytest
import torch

from biomedgpt.cli.model_check import greedy_decode
from biomedgpt.models import get_attention_impl, set_attention_impl
from conftest import STATE_DICT_DIR, build, load_fill_rule, require_spec


@pytest.fixture(scope="module")
def reference():
    require_spec("tiny_forward.pt", "fill_rule.py")
    return torch.load(os.path.join(STATE_DICT_DIR, "tiny_forward.pt"), weights_only=True)


@pytest.fixture(scope="module")
def filled_tiny():
    fill = load_fill_rule()
    model, task, _ = build("ofa_tiny")
    fill.apply_fill(model)
    return model.eval(), task


def _tensors(inputs):
    return {k: v for k, v in inputs.items() if torch.is_tensor(v)}


def test_fill_matches_digest(filled_tiny):
    import json

    digest = json.load(open(os.path.join(STATE_DICT_DIR, "tiny_fill_digest.json")))
    state = filled_tiny[0].state_dict()
    assert set(digest) == set(state)
    for key, expected in digest.items():
        value = state[key]
        if value.dtype.is_floating_point:
            assert value.double().sum().item() == pytest.approx(expected["sum"], rel=1e-9, abs=1e-6), key
        else:
            assert int(value.sum()) == expected["sum"], key


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_forward_matches_reference(reference, filled_tiny, case, impl):
    model, _ = filled_tiny
    inputs = _tensors(reference["inputs"][case])
    expected = reference["cases"][case]
    previous = get_attention_impl()
    set_attention_impl(impl)
    try:
        with torch.no_grad():
            encoder_inputs = {k: v for k, v in inputs.items() if k not in ("prev_output_tokens", "code_masks")}
            encoder_out = model.encoder(**encoder_inputs)
            logits, _ = model(**inputs)
            features, _ = model(**inputs, features_only=True)
    finally:
        set_attention_impl(previous)
    torch.testing.assert_close(encoder_out["encoder_out"][0], expected["encoder_out"], atol=1e-4, rtol=0)
    torch.testing.assert_close(encoder_out["position_embeddings"][0], expected["position_embeddings"], atol=1e-4, rtol=0)
    assert torch.equal(encoder_out["encoder_padding_mask"][0], expected["encoder_padding_mask"])
    torch.testing.assert_close(features, expected["decoder_features"], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, expected["logits"], atol=1e-4, rtol=0)
    assert torch.equal(logits.argmax(-1), expected["logits_argmax"])


@pytest.mark.parametrize("key", ["a", "a_norepeat", "b", "b_norepeat"])
def test_incremental_greedy_matches_reference(reference, filled_tiny, key):
    model, _ = filled_tiny
    case = key[0]
    inputs = {k: v for k, v in _tensors(reference["inputs"][case]).items() if k != "prev_output_tokens"}
    expected = reference["greedy"][key]
    tokens, step_logits = greedy_decode(model, inputs, steps=10, no_repeat=expected["no_repeat"])
    assert torch.equal(tokens, expected["tokens"])
    top_values, top_indices = step_logits.topk(50, dim=-1)
    torch.testing.assert_close(top_values, expected["step_top50_values"], atol=1e-4, rtol=0)


def test_incremental_equals_full_forward(reference, filled_tiny):
    """Each incremental step's logits equal the full-sequence forward pass at that position."""
    model, _ = filled_tiny
    inputs = {k: v for k, v in _tensors(reference["inputs"]["b"]).items() if k != "prev_output_tokens"}
    tokens, step_logits = greedy_decode(model, inputs, steps=10, no_repeat=True)
    with torch.no_grad():
        full, _ = model(**inputs, prev_output_tokens=tokens[:, :-1])
    torch.testing.assert_close(step_logits, full, atol=1e-4, rtol=0)
