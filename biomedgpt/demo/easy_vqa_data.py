"""easy-VQA (PyPI `easy-vqa`: 64x64 shape images, 13 answers) as BiomedGPT `vqa_gen` TSVs, plus the baselines
the demo must beat: the majority answer and the question-only prior (the best answer for each question text
on the training set, i.e. what a model that ignores the image can reach).

Splits: training images whose id is a multiple of `VALID_EVERY` are held out as validation; the test split is
easy-VQA's own. Rows: `question_id, image_id, question, 1.0|!+answer, objects(empty), base64 PNG`
(`--selected-cols 0,5,2,3,4`).
"""
import base64
import collections
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

VALID_EVERY = 50
SELECTED_COLS = "0,5,2,3,4"
COLOURS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")


@dataclass
class Question:
    qid: str
    image_id: str
    question: str
    answer: str
    image_path: str


def easy_vqa_questions() -> Tuple[List[Question], List[Question], List[str]]:
    """(train questions, test questions, the 13 answers) from the installed `easy-vqa` package."""
    try:
        import easy_vqa
    except ImportError:
        raise SystemExit("the demo needs the easy-vqa package: pip install easy-vqa") from None
    out = []
    for split, questions, paths in (("train", easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()),
                                    ("test", easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths())):
        texts, answers, images = questions
        out.append([Question(f"{split}{i}", f"{split}{image}", text, answer, paths[image])
                    for i, (text, answer, image) in enumerate(zip(texts, answers, images))])
    return out[0], out[1], list(easy_vqa.get_answers())


def split_train(train: List[Question]) -> Tuple[List[Question], List[Question]]:
    """Training images with id % VALID_EVERY == 0 (and all their questions) become the validation split."""
    held_out = lambda q: int(q.image_id[len("train"):]) % VALID_EVERY == 0  # noqa: E731
    return [q for q in train if not held_out(q)], [q for q in train if held_out(q)]


def question_kind(question: Question) -> str:
    """"yes/no" or "colour/shape" (the open questions)."""
    return "yes/no" if question.answer in ("yes", "no") else "colour/shape"


REPORT_KINDS = ("colour/shape", "yes/no", "colour/shape asking a colour", "colour/shape asking a shape",
                "yes/no naming a colour", "yes/no naming a shape")


def report_kinds(question: Question) -> List[str]:
    """The report's rows (`REPORT_KINDS`) a question counts in: its `question_kind`, and whether a colour/shape
    question asks for a colour or a shape, or whether a yes/no question names a colour ("is there a red
    shape?") or a shape ("is there a circle?")."""
    kind = question_kind(question)
    if kind == "colour/shape":
        return [kind, f"colour/shape asking a {'colour' if question.answer in COLOURS else 'shape'}"]
    words = question.question.rstrip("?").split()
    return [kind, "yes/no naming a colour" if any(w in COLOURS for w in words) else "yes/no naming a shape"]


def open_questions(questions: List[Question]) -> List[Question]:
    """The colour / shape questions (answer not yes/no): the question text alone cannot answer them, so a model
    trained on them must look at the image (`bench/demo_recipe_probe.py --valid valid_open`)."""
    return [q for q in questions if question_kind(q) == "colour/shape"]


def subsample(questions: List[Question], limit: Optional[int], seed: int) -> List[Question]:
    """At most `limit` questions, drawn at random (fixed by `seed`), kept in their original order."""
    if limit is None or limit >= len(questions):
        return questions
    keep = np.sort(np.random.default_rng(seed).choice(len(questions), size=limit, replace=False))
    return [questions[i] for i in keep]


def write_tsv(path: str, questions: List[Question]) -> str:
    cache: Dict[str, str] = {}
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        for q in questions:
            if q.image_path not in cache:
                with open(q.image_path, "rb") as image:
                    cache[q.image_path] = base64.b64encode(image.read()).decode("ascii")
            handle.write("\t".join([q.qid, q.image_id, q.question, f"1.0|!+{q.answer}", "", cache[q.image_path]])
                         + "\n")
    os.replace(temporary, path)
    return path


def write_answers(path: str, answers: List[str]) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({answer: i for i, answer in enumerate(answers)}, handle, indent=1)
    return path


def baselines(train: List[Question], test: List[Question]) -> Dict[str, float]:
    """Test accuracy (percent) of the majority answer and of the question-only prior."""
    counts = collections.Counter(q.answer for q in train)
    majority = counts.most_common(1)[0][0]
    by_question: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for q in train:
        by_question[q.question][q.answer] += 1
    prior = {text: c.most_common(1)[0][0] for text, c in by_question.items()}
    return {
        "majority": 100.0 * sum(q.answer == majority for q in test) / len(test),
        "question_only": 100.0 * sum(prior.get(q.question, majority) == q.answer for q in test) / len(test),
        "majority_answer": majority,
    }


def balanced_questions(questions: List[Question], seed: int) -> List[Question]:
    """The questions the text alone cannot answer: every colour/shape question, and the yes/no questions with
    as many "yes" as "no" answers for each question text (the more frequent answer drawn at random, fixed by
    `seed`). On easy-VQA the text alone answers 81 % of the yes/no questions ("is there a red shape?" is "no"
    7 times in 8), which lets a model ignore the image; on this subset only looking at the image helps."""
    by_text: Dict[Tuple[str, str], List[int]] = collections.defaultdict(list)
    for i, q in enumerate(questions):
        if question_kind(q) == "yes/no":
            by_text[q.question, q.answer].append(i)
    rng = np.random.default_rng(seed)
    dropped = set()
    for (text, answer), rows in by_text.items():
        other = by_text.get((text, "no" if answer == "yes" else "yes"), [])
        if len(rows) > len(other):
            dropped.update(rng.choice(rows, size=len(rows) - len(other), replace=False).tolist())
    return [q for i, q in enumerate(questions) if i not in dropped]
