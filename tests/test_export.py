"""`biomedgpt-export`: a trained checkpoint to model.safetensors + config.json and back, with equal tensors and
outputs, tied embeddings stored once, no outside files needed, and clear errors for a config that does not fit."""
import base64
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from synthetic import image_b64, write_task_data
from test_tasks_e2e import fairseq_train

COLOURS = '{"red": 0, "green": 1, "blue": 2}'
EMA = ["--uses-ema", "--store-ema", "--ema-fp32", "--ema-decay", "0.5", "--ema-start-update", "0"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(folder, DATA, trained checkpoint, export folder, re-imported checkpoint) after 2 updates of vqa_gen."""
    from biomedgpt.cli.export import main

    folder = tmp_path_factory.mktemp("export")
    data = write_task_data(str(folder), "vqa_gen")
    (folder / "answers.json").write_text(COLOURS)
    fairseq_train(data, "vqa_gen", folder / "ckpt", max_update=2, lr="2e-3",
                  extra=["--ans2label-file", str(folder / "answers.json"), *EMA])
    checkpoint = str(folder / "ckpt" / "checkpoint_last.pt")
    assert main(["export", checkpoint, str(folder / "exported")]) == 0
    assert main(["import", str(folder / "exported"), str(folder / "reimported.pt")]) == 0
    return folder, data, checkpoint, str(folder / "exported"), str(folder / "reimported.pt")


def load(path):
    from fairseq import checkpoint_utils

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([path])
    return models[0].eval(), task


def test_tensors_equal_and_tied_embeddings_stored_once(exported):
    from fairseq import checkpoint_utils
    from safetensors import safe_open

    from biomedgpt.export import read_export

    _, _, checkpoint, export_dir, reimported = exported
    original = checkpoint_utils.load_checkpoint_to_cpu(checkpoint)["model"]
    config, state = read_export(export_dir)
    assert list(state) == list(original)
    for key, value in original.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key

    with safe_open(os.path.join(export_dir, "model.safetensors"), "pt") as handle:
        stored = set(handle.keys())
    assert config["tied_weights"] == {"decoder.embed_tokens.weight": "encoder.embed_tokens.weight",
                                      "decoder.output_projection.weight": "encoder.embed_tokens.weight"}
    assert "encoder.embed_tokens.weight" in stored and not stored & set(config["tied_weights"])
    assert stored | set(config["tied_weights"]) == set(original)

    again = checkpoint_utils.load_checkpoint_to_cpu(reimported)["model"]
    ptr = again["encoder.embed_tokens.weight"].data_ptr()
    assert again["decoder.embed_tokens.weight"].data_ptr() == ptr == again["decoder.output_projection.weight"].data_ptr()
    assert all(torch.equal(again[k], v) for k, v in original.items())


def test_config_is_plain_json_and_self_contained(exported):
    _, _, _, export_dir, _ = exported
    with open(os.path.join(export_dir, "config.json")) as handle:
        config = json.load(handle)
    assert config["format"] == "biomedgpt-safetensors" and config["arch"] == "ofa_tiny"
    assert config["task_name"] == "vqa_gen" and config["dictionary_size"] == 59457
    assert config["model"]["encoder_layers"] == 1 and config["model"]["encoder_embed_dim"] == 64
    assert config["task"]["ans2label_file"] is None is config["model"]["ans2label_file"]  # answers inline
    assert json.loads(config["task"]["ans2label_dict"]) == json.loads(COLOURS)
    assert config["task"]["patch_image_size"] == 32 and config["num_updates"] == 2


def net_input(task, size=32):
    text = task.text
    src = torch.cat([torch.tensor([text.bos]), text.encode(" what colour is the image?"), torch.tensor([text.eos])])
    image = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    tokens = src[None].repeat(2, 1)
    return {"src_tokens": tokens, "src_lengths": torch.tensor([len(src)] * 2), "patch_images": image,
            "patch_masks": torch.tensor([True, True]), "prev_output_tokens": tokens[:, :-1]}


def test_model_outputs_equal(exported):
    from biomedgpt.export import load_exported

    _, _, checkpoint, export_dir, reimported = exported
    original, task = load(checkpoint)
    batch = net_input(task)
    with torch.no_grad():
        expected = original(**batch)[0]
        from_export = load_exported(export_dir)[0](**batch)[0]
        from_reimport = load(reimported)[0](**batch)[0]
    assert torch.equal(expected, from_export) and torch.equal(expected, from_reimport)


def test_reimported_checkpoint_answers_without_the_training_files(exported):
    from biomedgpt.inference import load as load_for_answers

    folder, _, checkpoint, _, reimported = exported
    image = folder / "red.png"
    image.write_bytes(base64.b64decode(image_b64("red", seed=7)))
    expected = load_for_answers(checkpoint, device="cpu").answer(str(image), "what colour is the image?")
    moved = folder / "answers.moved.json"
    os.rename(folder / "answers.json", moved)  # the training run's answer file is gone
    try:
        answer = load_for_answers(reimported, device="cpu").answer(str(image), "what colour is the image?")
    finally:
        os.rename(moved, folder / "answers.json")
    assert answer[0] == expected[0] and answer[1] == pytest.approx(expected[1], rel=1e-6)


@pytest.mark.slow
def test_fairseq_generate_on_the_reimported_checkpoint(exported):
    _, data, _, _, reimported = exported
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.generate", data, "--user-dir", os.path.dirname(__import__("biomedgpt").__file__),
         "--task", "vqa_gen", "--path", reimported, "--gen-subset", "valid", "--batch-size", "6", "--cpu",
         "--scoring", "vqa_accuracy"], capture_output=True, text=True, env=env, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert re.search(r"VQA accuracy = [\d.]+ \(6 ", log) and len(re.findall(r"^D-\d+\t", log, re.M)) == 6


def test_ema_weights_export(exported, tmp_path):
    pytest.importorskip("biomedgpt.ema_weights")
    from fairseq import checkpoint_utils

    from biomedgpt.ema_weights import use_ema_weights
    from biomedgpt.export import export_checkpoint, read_export

    _, _, checkpoint, _, _ = exported
    export_checkpoint(checkpoint, str(tmp_path), ema=True)
    state = use_ema_weights(checkpoint_utils.load_checkpoint_to_cpu(checkpoint), checkpoint)["model"]
    config, exported_state = read_export(str(tmp_path))
    assert config["weights"] == "ema"
    assert all(torch.equal(exported_state[k], v) for k, v in state.items())
    plain = checkpoint_utils.load_checkpoint_to_cpu(checkpoint)["model"]
    assert any(not torch.equal(plain[k], v) for k, v in state.items())  # EMA (decay 0.5) differs from the weights


def edited_copy(export_dir, target, edit):
    os.makedirs(target)
    os.link(os.path.join(export_dir, "model.safetensors"), os.path.join(target, "model.safetensors"))
    with open(os.path.join(export_dir, "config.json")) as handle:
        config = json.load(handle)
    edit(config)
    with open(os.path.join(target, "config.json"), "w") as handle:
        json.dump(config, handle)
    return str(target)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model"].update(encoder_ffn_embed_dim=256), r"tensor\(s\) of another shape \(e\.g\. encoder\.layers\.0"),
    (lambda c: c["model"].update(decoder_layers=2), r"tensor\(s\) the model needs are missing \(e\.g\. decoder\."),
    (lambda c: c["model"].update(encoder_layers=0), r"tensor\(s\) the model does not have \(e\.g\. encoder\."),
    (lambda c: c.update(dictionary_size=59458), r"dictionary_size 59458, but its task settings build a dictionary of 59457"),
])
def test_mismatched_config_is_refused_clearly(exported, tmp_path, edit, message):
    from biomedgpt.export import ExportMismatchError, import_checkpoint, load_exported

    bad = edited_copy(exported[3], tmp_path / "bad", edit)
    with pytest.raises(ExportMismatchError, match=message):
        import_checkpoint(bad, str(tmp_path / "bad.pt"))
    assert not (tmp_path / "bad.pt").exists()
    with pytest.raises(ExportMismatchError, match=message):
        load_exported(bad)


def test_not_an_export_folder(exported, tmp_path, capsys):
    from biomedgpt.cli.export import main
    from biomedgpt.export import ExportFormatError, import_checkpoint

    newer = edited_copy(exported[3], tmp_path / "newer", lambda c: c.update(format_version=99))
    with pytest.raises(ExportFormatError, match="format version 99, this biomedgpt reads version 1"):
        import_checkpoint(newer, str(tmp_path / "x.pt"))
    os.remove(os.path.join(newer, "model.safetensors"))
    assert main(["import", str(tmp_path), str(tmp_path / "x.pt")]) == 2
    assert "no config.json (not a biomedgpt export folder)" in capsys.readouterr().err
    assert main(["export", exported[2], exported[3]]) == 2  # never overwrites without --force
    assert "already holds an export" in capsys.readouterr().err
    shutil.rmtree(newer)


def test_custom_bpe_folder_travels_with_the_export(tmp_path):
    from biomedgpt.data.dictionary import PACKAGED_BPE_DIR
    from biomedgpt.export import _cfg_groups, _self_contained_task

    task = _self_contained_task({"_name": "caption", "bpe_dir": PACKAGED_BPE_DIR, "eval_cider_cached_tokens": "x.p"},
                                str(tmp_path))
    assert task["bpe_dir"] == "bpe" and task["eval_cider_cached_tokens"] is None
    assert sorted(os.listdir(tmp_path / "bpe")) == sorted(os.listdir(PACKAGED_BPE_DIR))
    config = {"task": task, "model": {"arch": "ofa_tiny"}, "model_config_type": "namespace"}
    assert _cfg_groups(config, str(tmp_path))["task"]["bpe_dir"] == str(tmp_path / "bpe")
