"""Stock `fairseq-generate` and `fairseq-validate` on checkpoints from a short `fairseq-train`: readable
S/T/H/D lines, task settings taken from the checkpoint, and score lines that equal the metric recomputed here."""
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
    for task in ("vqa_gen", "image_classify", "gigaword", "caption", "mnli", "snli_ve"):
        folder = tmp_path_factory.mktemp(task)
        data = write_task_data(str(folder), task)
        fairseq_train(data, task, folder / "ckpt", max_update=6, lr="2e-3")
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
def test_ensemble_of_two_checkpoints(trained):
    data, path = trained["gigaword"]
    log = run("generate", [data, "--user-dir", USER_DIR, "--task", "gigaword", "--path", f"{path}:{path}",
                           "--gen-subset", "valid", "--batch-size", "4", "--beam", "2", "--max-len-b", "8", "--cpu"])
    single = generate(trained, "gigaword", "rouge", "--beam", "2", "--max-len-b", "8")
    assert pairs(log) == pairs(single)  # averaging identical models changes nothing
