"""Stock `fairseq-generate` and `fairseq-validate` on checkpoints from a short `fairseq-train`: readable
S/T/H/D lines, task settings taken from the checkpoint, and score lines that equal the metric recomputed here."""
import json
import os
import re
import subprocess
import sys

import pytest

from synthetic import write_task_data
from test_tasks_e2e import fairseq_train

USER_DIR = os.path.dirname(__import__("biomedgpt").__file__)


def run(tool, args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, "-m", f"fairseq_cli.{tool}", *args], capture_output=True, text=True,
                            env=env, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def pairs(log):
    """(target, detokenised hypothesis) per sentence id, from fairseq-generate's T-/D- lines."""
    targets = dict(re.findall(r"^T-(\d+)\t(.*)$", log, re.M))
    hyps = {i: h for i, _, h in re.findall(r"^D-(\d+)\t(\S+)\t(.*)$", log, re.M)}
    assert targets and set(targets) == set(hyps), log[-2000:]
    return [(targets[i].strip(), hyps[i].strip()) for i in sorted(targets, key=int)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """task -> (DATA, checkpoint) after 6 updates of the tiny model."""
    out = {}
    for task in ("vqa_gen", "image_classify", "gigaword", "caption", "mnli", "snli_ve", "refcoco"):
        folder = tmp_path_factory.mktemp(task)
        data = write_task_data(str(folder), task)
        ema = ["--store-ema", "--ema-fp32", "--ema-decay", "0.9", "--ema-start-update", "0"] if task == "vqa_gen" else []
        fairseq_train(data, task, folder / "ckpt", max_update=6, lr="2e-3",
                      extra=[*ema, "--no-save-optimizer-state", "--no-epoch-checkpoints"])
        for name in os.listdir(folder / "ckpt"):  # keep one checkpoint per task: seven tasks' files fill small disks
            if name != "checkpoint_last.pt":
                os.remove(folder / "ckpt" / name)
        out[task] = (data, str(folder / "ckpt" / "checkpoint_last.pt"))
    return out


def generate(trained, task, scoring, *extra):
    data, path = trained[task]
    return run("generate", [data, "--user-dir", USER_DIR, "--task", task, "--path", path, "--gen-subset", "valid",
                            "--batch-size", "4", "--beam", "3", "--max-len-b", "12", "--scoring", scoring, "--cpu",
                            *extra])


@pytest.mark.slow
@pytest.mark.parametrize("task, scoring", [("vqa_gen", "vqa_accuracy"), ("image_classify", "accuracy"),
                                           ("mnli", "accuracy"), ("snli_ve", "accuracy")])
def test_generate_accuracy_equals_recomputed(trained, task, scoring):
    log = generate(trained, task, scoring)
    assert "task settings taken from the checkpoint" in log  # --selected-cols, answers, image size, ...
    rows = pairs(log)
    answers = {"yes", "no", "maybe"} if task in ("mnli", "snli_ve") else {"red", "green", "blue"}
    assert all(h in answers for _, h in rows)  # trie-constrained: only listed answers
    expected = 100 * sum(t == h for t, h in rows) / len(rows)
    reported = float(re.search(r"(?:VQA accuracy|Accuracy) = ([\d.]+) \((\d+)", log).group(1))
    assert reported == pytest.approx(expected, abs=0.01)


@pytest.mark.slow
def test_generate_rouge_equals_recomputed(trained):
    from rouge_score import rouge_scorer

    log = generate(trained, "gigaword", "rouge")
    rows = pairs(log)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = 100 * sum(scorer.score(t, h)["rougeL"].fmeasure for t, h in rows) / len(rows)
    reported = float(re.search(r"ROUGE-L = ([\d.]+)", log).group(1))
    assert reported == pytest.approx(expected, abs=0.01)


@pytest.mark.slow
def test_generate_cider_equals_recomputed(trained):
    from pycocoevalcap.cider.cider import Cider

    from biomedgpt.data.text import strip_punctuation

    log = generate(trained, "caption", "cider")
    rows = pairs(log)
    clean = lambda text: " ".join(strip_punctuation(text.lower()).split())  # noqa: E731
    refs = {i: [clean(r) for r in t.split("&&")] for i, (t, _) in enumerate(rows)}
    hyps = {i: [clean(h)] for i, (_, h) in enumerate(rows)}
    expected, _ = Cider().compute_score(refs, hyps)
    reported = float(re.search(r"CIDEr = ([\d.]+)", log).group(1))
    assert reported == pytest.approx(expected, abs=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("task, metric", [("vqa_gen", "vqa_score"), ("image_classify", "score"),
                                          ("gigaword", "rougeL_f1")])
def test_validate_reports_the_task_metric(trained, task, metric):
    data, path = trained[task]
    overrides = "{'eval_rouge': True}" if task == "gigaword" else "{}"  # a Python literal, as fairseq reads it
    log = run("validate", [data, "--user-dir", USER_DIR, "--task", task, "--path", path, "--valid-subset", "valid",
                           "--batch-size", "4", "--cpu", "--model-overrides", overrides])
    assert re.search(rf"valid on 'valid' subset \|.* {metric} [\d.]+", log), log[-2000:]


@pytest.mark.slow
def test_all_candidate_and_beam_search_generation_agree(trained):
    """vqa_gen generates by all-candidate scoring (the reference's evaluation) unless told to beam-search; with a
    beam as wide as the answer set both pick the same answers."""
    allcand = pairs(generate(trained, "vqa_gen", "vqa_accuracy"))
    beam = pairs(generate(trained, "vqa_gen", "vqa_accuracy", "--model-overrides",
                          "{'val_inference_type': 'beamsearch'}"))
    assert allcand == beam


@pytest.mark.slow
def test_fp16_generate_and_validate_need_no_casting(trained):
    """Stock `--fp16` casts the model with `.half()` (here on the CPU, as it would on a GPU); the dataset's fp32
    images are cast inside the model, the answers and their scores follow fp32's."""
    half, full = generate(trained, "vqa_gen", "vqa_accuracy", "--fp16"), generate(trained, "vqa_gen", "vqa_accuracy")
    rows = lambda text: {i: (float(s), h) for i, s, h in re.findall(r"^D-(\d+)\t(\S+)\t(.*)$", text, re.M)}  # noqa
    half_rows, full_rows = rows(half), rows(full)
    assert set(half_rows) == set(full_rows)
    same = [i for i in full_rows if half_rows[i][1] == full_rows[i][1]]
    assert len(same) >= 0.75 * len(full_rows)
    assert max(abs(half_rows[i][0] - full_rows[i][0]) for i in same) < 0.1
    reported = float(re.search(r"VQA accuracy = ([\d.]+)", half).group(1))
    assert reported == pytest.approx(100 * sum(t == h for t, h in pairs(half)) / len(half_rows), abs=0.01)
    data, path = trained["vqa_gen"]
    validated = run("validate", [data, "--user-dir", USER_DIR, "--task", "vqa_gen", "--path", path,
                                 "--valid-subset", "valid", "--batch-size", "4", "--cpu", "--fp16"])
    assert re.search(r"valid on 'valid' subset \|.* vqa_score [\d.]+", validated), validated[-2000:]


@pytest.mark.slow
def test_ensemble_of_two_checkpoints(trained):
    data, path = trained["gigaword"]
    log = run("generate", [data, "--user-dir", USER_DIR, "--task", "gigaword", "--path", f"{path}:{path}",
                           "--gen-subset", "valid", "--batch-size", "4", "--beam", "2", "--max-len-b", "8", "--cpu"])
    single = generate(trained, "gigaword", "rouge", "--beam", "2", "--max-len-b", "8")
    assert pairs(log) == pairs(single)  # averaging identical models changes nothing


def valid_rows(data):
    """The validation TSV's rows (its first column is the row's id)."""
    with open(data.split(",")[-1], encoding="utf-8") as handle:
        return [line.rstrip("\n").split("\t") for line in handle]


@pytest.mark.slow
@pytest.mark.parametrize("task, scoring, keys", [("vqa_gen", "vqa_accuracy", ("question_id", "answer")),
                                                 ("image_classify", "accuracy", ("uniq_id", "answer")),
                                                 ("caption", "cider", ("image_id", "caption")),
                                                 ("gigaword", "rouge", ("hyp", "ref"))])
def test_predictions_json_has_the_reference_layout(trained, task, scoring, keys, tmp_path):
    from biomedgpt.data.text import strip_punctuation
    from biomedgpt.metrics.text_metrics import gigaword_hypothesis

    path = tmp_path / "out" / "valid_predict.json"
    rows = pairs(generate(trained, task, scoring, "--predictions-json", str(path)))
    records = json.loads(path.read_text())
    assert [tuple(r) for r in records] == [keys] * len(rows)
    hyps = [h for _, h in rows]
    if task == "gigaword":
        assert [r["hyp"] for r in records] == [gigaword_hypothesis(h) for h in hyps]
        assert [r["ref"] for r in records] == [t for t, _ in rows]
        return
    expected = [strip_punctuation(h) for h in hyps] if task == "caption" else hyps
    assert [r[keys[1]] for r in records] == expected
    tsv = valid_rows(trained[task][0])
    ids = [str(i) for i in range(len(tsv))] if task == "image_classify" else [row[0] for row in tsv]
    assert [str(r[keys[0]]) for r in records] == ids


def iou(a, b):
    width, height = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.mark.slow
def test_refcoco_generates_boxes_scored_by_box_accuracy(trained, tmp_path):
    path = tmp_path / "valid_predict.json"
    log = generate(trained, "refcoco", "box_accuracy", "--predictions-json", str(path))
    rows = pairs(log)
    bins = lambda text: [int(k) for k in re.findall(r"<bin_(\d+)>", text)]  # noqa: E731
    assert all(len(bins(h)) == 4 and len(bins(t)) == 4 for t, h in rows), rows  # exactly 4 location tokens
    expected = 100 * sum(iou(bins(t), bins(h)) >= 0.5 for t, h in rows) / len(rows)
    reported = float(re.search(r"Acc@0.5 = ([\d.]+) \((\d+) regions", log).group(1))
    assert reported == pytest.approx(expected, abs=0.01)
    records = json.loads(path.read_text())
    assert [r["uniq_id"] for r in records] == [row[0] for row in valid_rows(trained["refcoco"][0])]
    assert all(len(r["box"]) == 4 for r in records)


@pytest.mark.slow
def test_ema_weights_for_validate_generate_and_the_python_api(trained):
    import torch

    import biomedgpt  # noqa: F401
    from fairseq import checkpoint_utils

    from biomedgpt.inference import load

    data, path = trained["vqa_gen"]
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    ema = state["extra_state"]["ema"]
    model = load(path, overrides={"ema_eval": True}, device="cpu").model
    weights = model.state_dict()
    name = "encoder.layers.0.fc1.weight"
    assert torch.equal(weights[name], ema[name]) and not torch.equal(weights[name], state["model"][name])

    def validate(overrides, checkpoint=path):
        return subprocess.run([sys.executable, "-m", "fairseq_cli.validate", data, "--user-dir", USER_DIR, "--task",
                               "vqa_gen", "--path", checkpoint, "--valid-subset", "valid", "--batch-size", "4", "--cpu",
                               "--model-overrides", overrides], capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))

    for overrides, uses_ema in (("{}", False), ("{'ema_eval': True}", True)):
        result = validate(overrides)
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-3000:]
        assert re.search(r"valid on 'valid' subset \| .* vqa_score [\d.]+", log), log[-3000:]
        assert ("evaluating with the EMA weights stored in" in log) == uses_ema
    without = validate("{'ema_eval': True}", checkpoint=trained["image_classify"][1])
    assert without.returncode != 0 and "the checkpoint has none" in without.stderr.strip().splitlines()[-1]
