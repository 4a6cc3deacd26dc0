"""The README's main job (`biomedgpt-demo`) in a reduced setting: every promised file exists and the printed
accuracy equals the accuracy recomputed here from the predictions file and the test TSV; the trunk
pre-training's labels by hand and its learning on solid-colour images."""
import json
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

SMALL = ["--train-questions", "240", "--test-questions", "48", "--valid-questions", "24", "--trunk-updates", "3",
         "--warmup-updates", "2", "--updates", "4", "--validate-every", "2", "--batch-size", "8", "--threads", "1",
         "--cpu"]


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
    for stage in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6"):
        assert f"=== {stage}" in log
    assert "trunk pre-training: update 3/3" in log
    trunk = str(out / "checkpoints" / "trunk.pt")
    assert re.search(rf"--resnet-model-path {re.escape(trunk)}\b", log)  # the warm-up starts from the trunk
    assert f"loaded 215 ResNet tensors from {trunk}" in log  # FrozenBatchNorm2d: no num_batches_tracked
    import torch

    trained = torch.load(out / "checkpoints" / "checkpoint_last.pt", weights_only=True)["model"]
    pretrained = torch.load(trunk, weights_only=True)
    fixed = [k for k in pretrained if f"encoder.embed_images.{k}" in trained]
    assert len(fixed) == 215  # --freeze-resnet --freeze-resnet-weights: through warm-up and training, the trunk
    for key in fixed:  # keeps its pre-trained values, rounded to the bf16 the model trains in
        ours = trained[f"encoder.embed_images.{key}"]
        assert torch.equal(ours, pretrained[key].to(torch.bfloat16).to(ours.dtype)), key
    assert 0 <= json.loads((out / "report.json").read_text())["trunk"]["valid_shape_accuracy"] <= 1
    assert "--- warm-up: 2 updates on" in log and "--bf16" in log  # balanced warm-up, bf16 on the CPU
    for name in ("checkpoints/trunk.pt", "checkpoints/checkpoint_best.pt", "logs/train.log", "logs/generate.log",
                 "logs/validate.log", "data/train.tsv", "data/test.tsv", "vocab/spm.model", "vocab/dict.txt",
                 "test_predict.json", "report.json"):
        assert (out / name).is_file(), name
    assert Image.open(out / "training_curve.png").size == (720, 480)
    assert list((out / "logs" / "tensorboard").rglob("events.out.tfevents.*"))

    truth, text = {}, {}
    with open(out / "data" / "test.tsv", encoding="utf-8") as handle:
        for line in handle:
            qid, _, text[qid], answer, *_ = line.split("\t")
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
    colours = {"red", "green", "blue", "black", "gray", "teal", "brown", "yellow"}
    yes_no = lambda q: truth[q] in ("yes", "no")  # noqa: E731
    names_colour = lambda q: bool(colours & set(text[q].rstrip("?").split()))  # noqa: E731
    kinds = {  # accuracy on yes/no vs colour/shape questions, and on each by what they ask or name
        "colour/shape": lambda q: not yes_no(q), "yes/no": yes_no,
        "colour/shape asking a colour": lambda q: truth[q] in colours,
        "colour/shape asking a shape": lambda q: not yes_no(q) and truth[q] not in colours,
        "yes/no naming a colour": lambda q: yes_no(q) and names_colour(q),
        "yes/no naming a shape": lambda q: yes_no(q) and not names_colour(q)}
    for kind, row in report["by_question_kind"].items():
        asked = [q for q in truth if kinds[kind](q)]
        assert row["questions"] == len(asked) > 0
        assert row["accuracy"] == pytest.approx(100 * sum(predictions[q] == truth[q] for q in asked) / len(asked),
                                                abs=0.01)
        assert f"{kind} ({len(asked)} questions): {row['accuracy']:.2f}%" in log
    assert {"yes/no", "colour/shape"} <= set(report["by_question_kind"]) <= set(kinds)
    for whole, parts in (("colour/shape", list(kinds)[2:4]), ("yes/no", list(kinds)[4:])):
        assert sum(report["by_question_kind"].get(k, {}).get("questions", 0) for k in parts) == \
            report["by_question_kind"][whole]["questions"]

    written = (out / "data" / "train.tsv").stat().st_mtime_ns
    again = demo(out)  # re-running resumes: data and vocabulary are kept, training continues from its checkpoint
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 4 updates\)", again), again[-3000:]
    assert (out / "data" / "train.tsv").stat().st_mtime_ns == written
    assert "trunk pre-training: update" not in again and "trunk: " in again  # the trunk is kept too


def test_trunk_labels_come_from_answers_and_from_words_the_image_has():
    from biomedgpt.demo.easy_vqa_data import Question
    from biomedgpt.demo.trunk import COLOURS, SHAPES, image_labels

    asked = [("a", "what color is the circle?", "red"),  # answer: colour; word: shape
             ("b", "is there not a blue shape?", "no"),  # negated, "no": blue is there
             ("b", "is there a triangle?", "no"),  # absent: says nothing
             ("c", "is no rectangle present?", "yes"),  # negated, "yes": absent
             ("c", "does the image contain a green shape?", "yes"),
             ("d", "what is the teal shape?", "triangle")]
    labels = image_labels([Question(f"q{i}", p, text, answer, p) for i, (p, text, answer) in enumerate(asked)])
    assert labels == {"a": (COLOURS.index("red"), SHAPES.index("circle")), "b": (COLOURS.index("blue"), -1),
                      "c": (COLOURS.index("green"), -1), "d": (COLOURS.index("teal"), SHAPES.index("triangle"))}


def test_trunk_pretraining_learns_colours_of_held_out_images(tmp_path):
    import torch

    from biomedgpt.demo.easy_vqa_data import Question
    from biomedgpt.demo.trunk import pretrain_trunk
    from biomedgpt.models.resnet import RESNET_BLOCKS, ResNet

    rgb = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    questions = {"train": [], "valid": []}
    for split, count in (("train", 12), ("valid", 4)):
        for i in range(count):
            colour = ("red", "blue")[i % 2]
            path = str(tmp_path / f"{split}{i}.png")
            shade = tuple(max(0, min(255, c + 3 * i)) for c in rgb[colour])
            Image.new("RGB", (32, 32), shade).save(path)
            questions[split].append(Question(f"{split}{i}", path, "what color is the shape?", colour, path))
    result = pretrain_trunk(questions["train"], questions["valid"], str(tmp_path / "trunk.pt"), 32, 60,
                            batch_size=6, lr=1e-3)
    assert result["images"] == 12 and result["valid_images"] == 4
    assert result["valid_colour_accuracy"] == 1.0
    trunk = ResNet(RESNET_BLOCKS["resnet50"])
    trunk.load_state_dict(torch.load(tmp_path / "trunk.pt", weights_only=True))  # the layout --resnet-model-path reads


def test_balanced_questions_leave_the_text_no_answer_to_guess():
    from biomedgpt.demo.easy_vqa_data import Question, balanced_questions, baselines

    rows = ([("is there a red shape?", "no")] * 7 + [("is there a red shape?", "yes")] * 2
            + [("is there not a circle?", "yes")] * 3 + [("is there a circle?", "no")] * 2
            + [("what shape is present?", "circle")] * 4)
    questions = [Question(f"q{i}", f"i{i}", text, answer, "") for i, (text, answer) in enumerate(rows)]
    kept = balanced_questions(questions, seed=3)
    counts = {}
    for q in kept:
        counts[q.question, q.answer] = counts.get((q.question, q.answer), 0) + 1
    # each yes/no text keeps as many of its frequent answer as of its rare one (texts with one answer: none)
    assert counts == {("is there a red shape?", "no"): 2, ("is there a red shape?", "yes"): 2,
                      ("what shape is present?", "circle"): 4}
    assert [q.qid for q in kept] == sorted((q.qid for q in kept), key=lambda i: int(i[1:]))  # original order
    assert baselines(kept, [q for q in kept if q.answer in ("yes", "no")])["question_only"] == 50.0
    assert balanced_questions(questions, seed=3) == kept
