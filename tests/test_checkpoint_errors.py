"""Unusable checkpoints give one line saying what is wrong and how to fix it, never a deep traceback.

Cases: a truncated file, a pickled callable (must not run: its side-effect file must not appear), weights of
another architecture (more / fewer layers, wider, `ofa_tiny` weights into `--arch ofa_medium`), a vocabulary of
another size (a checkpoint trained with a SentencePiece `--bpe-dir` loaded with the GPT-2 files), and missing
tensors (core weights: an error; tensors of options added later, e.g. attention layer norms: a one-line warning).

Each is tried through the stock commands in subprocesses (`fairseq-generate`, `fairseq-validate`,
`fairseq-train --restore-file`: exit status 1, no "Traceback", the last line `fairseq-<cmd>: error: ...`),
through `biomedgpt.inference.load`, and on `OFAModel.load_state_dict` directly.
"""
import concurrent.futures
import copy
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from synthetic import write_task_data
from test_tasks_e2e import TINY, run_fairseq_train

from biomedgpt.compat import CheckpointMismatchError, CheckpointReadError, UnsafeCheckpointError

USER_DIR = os.path.dirname(__import__("biomedgpt").__file__)
COLOURS = '{"red": 0, "green": 1, "blue": 2}'
VQA = ["--task", "vqa_gen", "--selected-cols", "0,5,2,3,4", "--ans2label-dict", COLOURS, "--prompt-type",
       "prev_output"]
TIED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")


class _Exploit:
    """Unpickling this runs `touch <marker>`: a checkpoint must never be able to do that."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 1-update vqa_gen checkpoint of the tiny model (fairseq-train) and broken variants of it."""
    from biomedgpt.cli.train_spm import main as train_spm
    from biomedgpt.data.dictionary import build_ofa_dictionary

    folder = tmp_path_factory.mktemp("checkpoints")
    data = write_task_data(str(folder), "vqa_gen", train=8, valid=4)
    run_fairseq_train([data, *VQA, *TINY, "--criterion", "adjust_label_smoothed_cross_entropy", "--optimizer", "adam",
                       "--lr", "1e-3", "--batch-size", "8", "--cpu", "--max-update", "1", "--save-dir",
                       str(folder / "run"), "--no-epoch-checkpoints", "--no-save-optimizer-state",
                       "--disable-validation", "--num-workers", "0"])
    good = str(folder / "run" / "checkpoint_last.pt")
    state = torch.load(good, weights_only=True)
    paths = {"good": good, "data": data, "marker": str(folder / "PWNED")}

    def save(name, value):
        paths[name] = str(folder / f"{name}.pt")
        torch.save(value, paths[name])

    with open(good, "rb") as handle:
        raw = handle.read()
    paths["truncated"] = str(folder / "truncated.pt")
    with open(paths["truncated"], "wb") as handle:
        handle.write(raw[: len(raw) // 2])
    save("callable", dict(state, extra_state=dict(state["extra_state"], hook=_Exploit(paths["marker"]))))
    save("missing_core", dict(state, model={k: v for k, v in state["model"].items()
                                            if k != "decoder.layers.0.fc1.weight"}))
    save("missing_optional", dict(state, model={k: v for k, v in state["model"].items()
                                                if "rel_pos_table_list" not in k}))
    # as if trained with a SentencePiece --bpe-dir: its dictionary's number of embedding rows, and that folder
    # in the saved settings (loading it with its own --bpe-dir works: see the positive control)
    spm_dir = str(folder / "spm")
    assert train_spm(["--input", data.split(",")[0], "--tsv-cols", "2,3", "--vocab-size", "28", "--output-dir",
                      spm_dir, "--lowercase"]) == 0
    rows = len(build_ofa_dictionary(spm_dir))
    spm = copy.deepcopy({k: v for k, v in state.items() if k != "model"})
    spm["model"] = {k: (v[:rows].clone() if k in TIED else v) for k, v in state["model"].items()}
    spm["cfg"]["task"]["bpe_dir"] = spm_dir
    spm["cfg"]["model"].bpe_dir = spm_dir
    save("spm", spm)
    paths["spm_dir"], paths["spm_rows"] = spm_dir, rows
    yield paths
    shutil.rmtree(folder, ignore_errors=True)  # ~1.5 GB of checkpoints


# ---------------------------------------------------------------------------------------------- commands
def command(tool, files, path, *extra):
    subset = "--gen-subset" if tool == "generate" else "--valid-subset"
    args = [files["data"], "--user-dir", USER_DIR, *VQA, "--path", path, subset, "valid", "--batch-size", "4",
            "--cpu", "--num-workers", "0", *extra]
    if tool == "train":
        args = [files["data"], "--user-dir", USER_DIR, *VQA, "--arch", "ofa_medium", "--patch-image-size", "32",
                "--criterion", "adjust_label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-3",
                "--batch-size", "8", "--cpu", "--max-update", "2", "--restore-file", path, "--save-dir",
                os.path.dirname(path) + "/medium", "--disable-validation", "--num-workers", "0", *extra]
    return [sys.executable, "-m", f"fairseq_cli.{tool}", *args]


CASES = {
    # name: (tool, checkpoint, extra args, pattern the one-line error must match)
    "generate-truncated": ("generate", "truncated", [],
                           r"cannot read checkpoint \S+truncated\.pt: the file is truncated"),
    "generate-pickled-callable": ("generate", "callable", [], r"refused to load checkpoint \S+callable\.pt: it "
                                                              r"references the global (posix|os)\.system"),
    "generate-sentencepiece-vocabulary-with-gpt2": (
        "generate", "spm", [], r"the checkpoint has \d+ token embeddings but this model's dictionary has 59457 "
                               r"symbols: it was trained with another vocabulary; use the --bpe-dir"),
    "generate-more-encoder-layers": (
        "generate", "good", ["--model-overrides", "{'encoder_layers': 2}"],
        r"1 encoder layers in the checkpoint, 2 in the model \(--encoder-layers\).*drop --model-overrides"),
    "validate-missing-core-tensor": ("validate", "missing_core", [],
                                     r"1 model tensors missing \(e\.g\. decoder\.layers\.0\.fc1\.weight\)"),
    "train-restore-tiny-into-ofa-medium": (
        "train", "good", [], r"embedding dim 64 in the checkpoint, 512 in the model.*Cannot load model parameters"),
}


@pytest.fixture(scope="module")
def outcomes(files):
    """Every command case, two at a time: name -> (return code, stdout + stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("BIOMEDGPT_TRACEBACK", None)

    def run(name):
        tool, checkpoint, extra, _ = CASES.get(name, ("validate", "missing_optional", [], None))
        result = subprocess.run(command(tool, files, files[checkpoint], *extra), capture_output=True, text=True,
                                env=env, timeout=600)
        return name, (result.returncode, result.stdout + result.stderr)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, [*CASES, "validate-missing-optional-tensors"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_command_ends_with_one_line_error(files, outcomes, name):
    tool, _, _, pattern = CASES[name]
    code, log = outcomes[name]
    assert code == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    last = log.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"fairseq-{tool}: error: "), last
    assert re.search(pattern, last), last
    assert not os.path.exists(files["marker"])


@pytest.mark.slow
def test_missing_optional_tensors_load_with_a_one_line_warning(outcomes):
    """Tensors of options added after a checkpoint was trained keep their initial values (the reference's rule)."""
    code, log = outcomes["validate-missing-optional-tensors"]
    assert code == 0, log[-3000:]
    warnings = [line for line in log.splitlines() if "the checkpoint lacks" in line]
    assert len(warnings) == 1 and re.search(r"lacks \d+ tensors of this model, which keep their initial values "
                                            r"\(e\.g\. \S*rel_pos_table_list\S*\)", warnings[0]), warnings


# ---------------------------------------------------------------------------------------------- Python API
def one_line(exc) -> str:
    message = str(exc)
    assert "\n" not in message, message
    return message


def test_inference_load_truncated(files):
    from biomedgpt import inference

    with pytest.raises(CheckpointReadError) as info:
        inference.load(files["truncated"], device="cpu")
    assert "truncated" in one_line(info.value)


def test_inference_load_pickled_callable_does_not_run_it(files):
    from biomedgpt import inference

    with pytest.raises(UnsafeCheckpointError) as info:
        inference.load(files["callable"], device="cpu")
    assert "execute code" in one_line(info.value)
    assert not os.path.exists(files["marker"])


def test_inference_load_sentencepiece_checkpoint_with_gpt2_files(files):
    from biomedgpt import inference
    from biomedgpt.data.dictionary import PACKAGED_BPE_DIR

    model = inference.load(files["spm"], device="cpu")  # positive control: its own --bpe-dir
    assert len(model.task.source_dictionary) == files["spm_rows"]
    with pytest.raises(CheckpointMismatchError) as info:
        inference.load(files["spm"], overrides={"bpe_dir": PACKAGED_BPE_DIR}, device="cpu")
    assert f"has {files['spm_rows']} token embeddings" in one_line(info.value) and "--bpe-dir" in str(info.value)


@pytest.mark.parametrize("overrides, pattern", [
    ({"encoder_layers": 2}, r"1 encoder layers in the checkpoint, 2 in the model"),
    ({"decoder_ffn_embed_dim": 256}, r"decoder FFN dim 128 in the checkpoint, 256 in the model"),
])
def test_inference_load_other_architecture(files, overrides, pattern):
    """(Wider models through fairseq-train: test_command_ends_with_one_line_error[train-...].)"""
    from biomedgpt import inference

    with pytest.raises(CheckpointMismatchError) as info:
        inference.load(files["good"], overrides=overrides, device="cpu")
    assert re.search(pattern, one_line(info.value)), str(info.value)


def test_inference_load_missing_core_tensor(files):
    from biomedgpt import inference

    with pytest.raises(CheckpointMismatchError, match=r"decoder\.layers\.0\.fc1\.weight") as info:
        inference.load(files["missing_core"], device="cpu")
    one_line(info.value)


# ---------------------------------------------------------------------------------------------- load_state_dict
SMALL = ["--encoder-layers=2", "--decoder-layers=2", "--encoder-embed-dim=64", "--decoder-embed-dim=64",
         "--encoder-ffn-embed-dim=128", "--decoder-ffn-embed-dim=128", "--encoder-attention-heads=2",
         "--decoder-attention-heads=2"]


@pytest.fixture(scope="module")
def small():
    from conftest import build

    torch.manual_seed(0)
    model, _, args = build("ofa_tiny", SMALL)
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fewer_layers_in_the_model_names_both_counts(small):
    from conftest import build

    _, state = small
    one_layer, _, _ = build("ofa_tiny", [*SMALL, "--encoder-layers=1"])
    with pytest.raises(CheckpointMismatchError) as info:
        one_layer.load_state_dict(dict(state), strict=True)
    message = one_line(info.value)
    assert "2 encoder layers in the checkpoint, 1 in the model (--encoder-layers)" in message
    assert "tensors the model does not have (e.g. encoder.layers.1." in message


def test_vocabulary_change_is_refused_but_a_few_added_symbols_are_not(small):
    model, state = small
    vocabulary = len(model.encoder.dictionary)
    other = dict(state)
    for key in TIED:
        other[key] = state[key][: vocabulary - 2000].clone()
    with pytest.raises(CheckpointMismatchError, match=r"has 57457 token embeddings but this model's dictionary has "
                                                      r"59457 symbols"):
        copy.deepcopy(model).load_state_dict(dict(other), strict=True)
    few = dict(state)
    for key in TIED:
        few[key] = state[key][: vocabulary - 5].clone()
    copy.deepcopy(model).load_state_dict(few, strict=True)  # the reference's resize for added symbols


def test_missing_optional_tensors_warn_once(small, caplog):
    model, state = small
    partial = {k: v for k, v in state.items() if "ffn_layernorm" not in k}
    with caplog.at_level("WARNING"):
        copy.deepcopy(model).load_state_dict(partial, strict=True)
    lines = [r.getMessage() for r in caplog.records if "the checkpoint lacks" in r.getMessage()]
    assert len(lines) == 1 and "ffn_layernorm" in lines[0] and "\n" not in lines[0]


def test_matching_checkpoint_loads_without_warnings(small, caplog):
    model, state = small
    with caplog.at_level("WARNING"):
        copy.deepcopy(model).load_state_dict(dict(state), strict=True)
    assert not [r for r in caplog.records if "the checkpoint" in r.getMessage()]
