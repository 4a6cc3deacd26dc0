"""The README's main job (`biomedgpt-demo`) in a reduced setting: every promised file exists and the printed
accuracy equals the accuracy recomputed here from the predictions file and the test TSV."""
import json
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

SMALL = ["--train-questions", "240", "--test-questions", "48", "--valid-questions", "24", "--warmup-updates", "2", "--updates", "4",
         "--validate-every", "2", "--batch-size", "8", "--threads", "1", "--cpu"]


def demo(out, *extra):
    result = subprocess.run([sys.executable, "-m", "biomedgpt.cli.demo", "--out", str(out), *SMALL, *extra],
                            capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


@pytest.mark.slow
def test_demo_end_to_end_in_a_reduced_setting(tmp_path):
    out = tmp_path / "demo"
    log = demo(out, "--fresh")
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"=== {stage}" in log
    assert "--- warm-up: 2 updates on" in log and "--bf16" in log  # grounding warm-up, bf16 on the CPU
    for name in ("checkpoints/checkpoint_best.pt", "logs/train.log", "logs/generate.log", "logs/validate.log",
                 "data/train.tsv", "data/test.tsv", "vocab/spm.model", "vocab/dict.txt", "test_predict.json",
                 "report.json"):
        assert (out / name).is_file(), name
    assert Image.open(out / "training_curve.png").size == (720, 480)
    assert list((out / "logs" / "tensorboard").rglob("events.out.tfevents.*"))

    truth = {}
    with open(out / "data" / "test.tsv", encoding="utf-8") as handle:
        for line in handle:
            qid, _, _, answer, *_ = line.split("\t")
            truth[qid] = answer.split("|!+")[1]
    predictions = {r["question_id"]: r["answer"] for r in json.loads((out / "test_predict.json").read_text())}
    assert set(predictions) == set(truth) and len(truth) == 48
    expected = 100 * sum(predictions[q] == a for q, a in truth.items()) / len(truth)
    printed = float(re.search(r"test accuracy \(beam search, 48 questions\): ([\d.]+)%", log).group(1))
    assert printed == pytest.approx(expected, abs=0.01)
    assert float(re.search(r"\[fairseq-generate: ([\d.]+)%", log).group(1)) == pytest.approx(expected, abs=0.01)
    assert re.search(r"majority answer \('\w+'\): [\d.]+%   question-only prior: [\d.]+%", log)
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"] == pytest.approx(expected, abs=0.01) and report["test_questions"] == 48
    for kind, row in report["by_question_kind"].items():  # accuracy on yes/no vs colour/shape questions
        asked = [q for q, a in truth.items() if (a in ("yes", "no")) == (kind == "yes/no")]
        assert row["questions"] == len(asked) > 0
        assert row["accuracy"] == pytest.approx(100 * sum(predictions[q] == truth[q] for q in asked) / len(asked),
                                                abs=0.01)
        assert f"{kind} questions ({len(asked)}): {row['accuracy']:.2f}%" in log
    assert set(report["by_question_kind"]) == {"yes/no", "colour/shape"}

    written = (out / "data" / "train.tsv").stat().st_mtime_ns
    again = demo(out)  # re-running resumes: data and vocabulary are kept, training continues from its checkpoint
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 4 updates\)", again), again[-3000:]
    assert (out / "data" / "train.tsv").stat().st_mtime_ns == written
