"""State-dict keys, shapes, dtypes and parameter counts of every architecture equal the released ones."""
import os
import re

import pytest
import torch

from conftest import STATE_DICT_DIR, build, require_spec

ARCHS = ["ofa_tiny", "ofa_medium", "ofa_base", "ofa_large", "ofa_huge"]


def _summary_params():
    text = open(os.path.join(STATE_DICT_DIR, "summary.md")).read()
    return {arch: int(count.replace(",", "")) for arch, count in re.findall(r"\| (ofa_\w+) \|.*?\*\*([\d,]+)\*\*", text)}


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_matches_released_layout(arch):
    short = arch.split("_")[1]
    require_spec(f"{short}.keys.tsv", "summary.md")
    with torch.device("meta"):  # shapes only: building ofa_huge for real would take GBs
        model, _, _ = build(arch)
    expected = [line.rstrip("\n").split("\t") for line in open(os.path.join(STATE_DICT_DIR, f"{short}.keys.tsv"))][1:]
    ours = [[key, ",".join(map(str, value.shape)), str(value.dtype).replace("torch.", "")]
            for key, value in model.state_dict().items()]
    assert ours == expected
    unique = sum(p.numel() for p in model.parameters())
    assert unique == _summary_params()[arch]


def test_int_buffers_match_reference():
    import hashlib
    import json

    require_spec("int_buffers.json")
    facts = json.load(open(os.path.join(STATE_DICT_DIR, "int_buffers.json")))
    model, _, _ = build("ofa_tiny", ["--encoder-layers=1", "--decoder-layers=1"])
    state = model.state_dict()
    for key, fact in facts.items():
        value = state[key]
        digest = hashlib.sha256(value.contiguous().numpy().astype("<i8").tobytes()).hexdigest()
        assert digest == fact["sha256_int64_le"], key
        assert list(value.shape) == fact["shape"]


def test_dictionary_layout():
    import json

    require_spec("dict_facts.json")
    facts = json.load(open(os.path.join(STATE_DICT_DIR, "dict_facts.json")))
    _, task, _ = build("ofa_tiny", ["--encoder-layers=1", "--decoder-layers=1"])
    d = task.source_dictionary
    assert len(d) == facts["len"]
    assert (d.bos(), d.pad(), d.eos(), d.unk()) == (facts["bos"], facts["pad"], facts["eos"], facts["unk"])
    assert d.index("<mask>") == facts["mask"]
    assert d.index("<code_0>") == facts["code_0"] and d.index("<code_8191>") == facts["code_8191"]
    assert d.index("<bin_0>") == facts["bin_0"] and d.index("<bin_999>") == facts["bin_999"]
    assert d.index("madeupword0000") == facts["madeupword0000"]
    bpe_ids = d.encode_line(task.bpe.encode(" what does the image describe?"), add_if_not_exist=False,
                            append_eos=False).tolist()
    assert bpe_ids == [99, 473, 5, 2274, 6190, 116]
