"""Bad data rows, task by task: a clear `DataError` (file, 1-based line, column) without skipping; with
`--skip-invalid-rows` exactly the bad rows are left out, counted, and the good rows are unchanged.

Every task reads one file holding good rows and bad rows of each kind that task can meet (too few columns,
bad base64, truncated or non-image bytes, empty text, bad labels / answers / boxes), with a blank line near
the top so that line numbers and row indices differ, and a clean file with the same good rows only. Tasks
are built in-process through fairseq's parser (`conftest.build`) and the files are loaded with
`task.load_dataset("train", epoch=...)`: DATA is `bad.tsv,clean.tsv,clean.tsv`, so training epoch 1 reads
the mixed file and epoch 2 the clean one.
"""
import base64
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import pytest
import torch

from conftest import build
from synthetic import (caption_rows, classify_rows, image_b64, nli_rows, refcoco_rows, snli_rows, summary_rows,
                       vqa_rows)

from biomedgpt.data.errors import DataError

TINY = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
        "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--patch-image-size", "32"]
COLOURS = '{"red": 0, "green": 1, "blue": 2}'
TASK_FLAGS = {
    "vqa_gen": ["--selected-cols", "0,5,2,3,4", "--ans2label-dict", COLOURS, "--prompt-type", "prev_output"],
    "image_classify": ["--selected-cols", "0,2", "--ans2label-dict", COLOURS],
    "caption": ["--selected-cols", "0,4,2"],
    "gigaword": ["--selected-cols", "0,1"],
    "mnli": ["--selected-cols", "0,1,2", "--prompt-type", "src"],
    "snli_ve": ["--selected-cols", "0,1,2,3,4", "--prompt-type", "prev_output"],
    "refcoco": ["--selected-cols", "0,1,2,3"],
}
GOOD_ROWS = {"vqa_gen": vqa_rows, "image_classify": classify_rows, "caption": caption_rows, "gigaword": summary_rows,
             "mnli": nli_rows, "snli_ve": snli_rows, "refcoco": refcoco_rows}
EPOCH_BAD, EPOCH_CLEAN = 1, 2

# ---------------------------------------------------------------------------------------------- bad values
NOT_BASE64 = "this is *not* base64!"
NOT_AN_IMAGE = base64.b64encode(b"%PDF-1.4 definitely not an image " * 4).decode()


def truncated_image() -> str:
    data = base64.b64decode(image_b64("red", size=32))
    return base64.b64encode(data[: len(data) // 2]).decode()


def setting(column: int, value) -> Callable[[List[str]], List[str]]:
    def mutate(row):
        row = list(row)
        row[column] = value() if callable(value) else value
        return row
    return mutate


def keeping(count: int) -> Callable[[List[str]], List[str]]:
    return lambda row: list(row[:count])


def invalid_utf8(column: int) -> Callable[[List[str]], bytes]:
    def mutate(row):
        fields = [f.encode() for f in row]
        fields[column] = fields[column][:5] + b"\xff\xfe" + fields[column][5:]
        return b"\t".join(fields)
    return mutate


@dataclass
class Case:
    """One kind of bad row: `mutate(good_raw_row) -> raw row (list of fields, or bytes)` and the column the error
    must name (a name from the task's `column_names`; None: a row-level problem, no column)."""
    task: str
    name: str
    mutate: Callable
    column: Optional[str]


CASES = [
    # vqa_gen raw layout: question_id, image_id, question, conf|!+answer, objects, base64 (--selected-cols 0,5,2,3,4)
    Case("vqa_gen", "too_few_columns", keeping(4), "image"),
    Case("vqa_gen", "bad_base64", setting(5, NOT_BASE64), "image"),
    Case("vqa_gen", "truncated_image", setting(5, truncated_image), "image"),
    Case("vqa_gen", "not_an_image", setting(5, NOT_AN_IMAGE), "image"),
    Case("vqa_gen", "empty_image", setting(5, ""), "image"),
    Case("vqa_gen", "empty_question", setting(2, "   "), "question"),
    Case("vqa_gen", "unknown_answer_in_train", setting(3, "1.0|!+purple"), "answers"),
    Case("vqa_gen", "malformed_confidence", setting(3, "high|!+red"), "answers"),
    Case("vqa_gen", "answer_without_confidence", setting(3, "red"), "answers"),
    Case("vqa_gen", "no_answer", setting(3, ""), "answers"),
    # image_classify raw layout: base64, label_index, label_name (--selected-cols 0,2)
    Case("image_classify", "too_few_columns", keeping(2), "label_name"),
    Case("image_classify", "bad_base64", setting(0, NOT_BASE64), "image"),
    Case("image_classify", "truncated_image", setting(0, truncated_image), "image"),
    Case("image_classify", "empty_label", setting(2, " "), "label_name"),
    Case("image_classify", "unknown_class", setting(2, "purple"), "label_name"),
    # caption raw layout: uniq_id, image_id, caption, objects, base64 (--selected-cols 0,4,2)
    Case("caption", "too_few_columns", keeping(3), "image"),
    Case("caption", "bad_base64", setting(4, NOT_BASE64), "image"),
    Case("caption", "truncated_image", setting(4, truncated_image), "image"),
    Case("caption", "not_an_image", setting(4, NOT_AN_IMAGE), "image"),
    Case("caption", "empty_caption", setting(2, ""), "caption"),
    # gigaword: source, target (--selected-cols 0,1)
    Case("gigaword", "too_few_columns", keeping(1), "target"),
    Case("gigaword", "empty_source", setting(0, " "), "source"),
    Case("gigaword", "empty_target", setting(1, ""), "target"),
    Case("gigaword", "invalid_utf8", invalid_utf8(0), None),
    # mnli: sentence1, sentence2, label (--selected-cols 0,1,2)
    Case("mnli", "too_few_columns", keeping(2), "label"),
    Case("mnli", "empty_sentence1", setting(0, ""), "sentence1"),
    Case("mnli", "empty_sentence2", setting(1, "  "), "sentence2"),
    Case("mnli", "multi_token_label", setting(2, "maybe yes"), "label"),
    Case("mnli", "label_outside_answer_set", setting(2, "banana"), "label"),
    Case("mnli", "numeric_label_outside_answer_set", setting(2, "3"), "label"),
    Case("mnli", "empty_label", setting(2, ""), "label"),
    # snli_ve: uniq_id, image, hypothesis, caption, label (--selected-cols 0,1,2,3,4)
    Case("snli_ve", "too_few_columns", keeping(4), "label"),
    Case("snli_ve", "bad_base64", setting(1, NOT_BASE64), "image"),
    Case("snli_ve", "truncated_image", setting(1, truncated_image), "image"),
    Case("snli_ve", "empty_hypothesis", setting(2, ""), "hypothesis"),
    Case("snli_ve", "bad_label", setting(4, "probably"), "label"),
    Case("snli_ve", "empty_label", setting(4, ""), "label"),
    # refcoco: uniq_id, image, text, "x0,y0,x1,y1" (--selected-cols 0,1,2,3); the images are 48 x 48
    Case("refcoco", "too_few_columns", keeping(3), "region"),
    Case("refcoco", "bad_base64", setting(1, NOT_BASE64), "image"),
    Case("refcoco", "truncated_image", setting(1, truncated_image), "image"),
    Case("refcoco", "empty_text", setting(2, " "), "text"),
    Case("refcoco", "box_with_three_numbers", setting(3, "1,2,3"), "region"),
    Case("refcoco", "box_not_numbers", setting(3, "a,b,c,d"), "region"),
    Case("refcoco", "box_inverted", setting(3, "20,20,10,10"), "region"),
    Case("refcoco", "box_outside_image", setting(3, "0,0,100,100"), "region"),
    Case("refcoco", "box_nan", setting(3, "nan,0,10,10"), "region"),
]
TASKS = list(TASK_FLAGS)
assert {case.task for case in CASES} == set(TASKS)

# ---------------------------------------------------------------------------------------------- files


@dataclass
class Entry:
    """One data row of a written file: its dataset index, 1-based physical line, and what it is."""
    index: int
    line: int
    good: Optional[int]  # index of the good row (position in the clean file), None for a bad row
    case: Optional[Case]


def write_rows(path: str, rows: list, blank_after_first: bool = True) -> List[int]:
    """Write raw rows (lists of str, or bytes); a blank line after the first row. Returns each row's line."""
    lines, number = [], 0
    with open(path, "wb") as handle:
        for position, row in enumerate(rows):
            data = row if isinstance(row, bytes) else "\t".join(row).encode("utf-8")
            handle.write(data + b"\n")
            number += 1
            lines.append(number)
            if position == 0 and blank_after_first:
                handle.write(b"\n")
                number += 1
    return lines


def mixed_file(path: str, good_rows: list, cases: List[Case]) -> List[Entry]:
    """Good rows with one bad row (made from the next good row) after each of the first good rows."""
    assert len(good_rows) > len(cases)
    layout = []
    for position, row in enumerate(good_rows):
        layout.append((position, None, row))
        if position < len(cases):
            layout.append((None, cases[position], cases[position].mutate(good_rows[(position + 1) % len(good_rows)])))
    lines = write_rows(path, [row for _, _, row in layout])
    return [Entry(index, line, good, case) for index, ((good, case, _), line) in enumerate(zip(layout, lines))]


class TaskData:
    """The two files of one task and, lazily, its task built with and without --skip-invalid-rows."""

    def __init__(self, task: str, folder: str):
        self.name = task
        cases = [case for case in CASES if case.task == task]
        self.good_rows = GOOD_ROWS[task](len(cases) + 3)
        self.paths = {name: os.path.join(folder, f"{name}.tsv") for name in ("bad", "clean")}
        self.entries = mixed_file(self.paths["bad"], self.good_rows, cases)
        write_rows(self.paths["clean"], self.good_rows, blank_after_first=False)
        self._tasks = {}

    def task(self, skip: bool):
        if skip not in self._tasks:
            data = ",".join([self.paths["bad"], self.paths["clean"], self.paths["clean"]])
            extra = [f"--task={self.name}", *TINY, *TASK_FLAGS[self.name], *(["--skip-invalid-rows"] if skip else [])]
            _, task, _ = build("ofa_tiny", extra, data=data)
            self._tasks[skip] = task
        return self._tasks[skip]

    def dataset(self, skip: bool, epoch: int):
        """A freshly loaded training dataset of epoch `epoch`'s file (its skip counter at 0)."""
        task = self.task(skip)
        task.load_dataset("train", epoch=epoch)
        return task.dataset("train")


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_rows")
    cache = {}

    def get(task: str) -> TaskData:
        if task not in cache:
            cache[task] = TaskData(task, str(folder / task))
        return cache[task]

    for task in TASKS:
        os.makedirs(folder / task)
    return get


def read(dataset, index: int):
    """`dataset[index]` with every RNG reset first (image_classify's training augmentation is random)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return dataset[index]


# ---------------------------------------------------------------------------------------------- (a) errors


@pytest.mark.parametrize("case", [pytest.param(case, id=f"{case.task}-{case.name}") for case in CASES])
def test_bad_row_raises_data_error_naming_file_line_and_column(task_data, case):
    data = task_data(case.task)
    dataset = data.dataset(skip=False, epoch=EPOCH_BAD)
    assert dataset.tsv.path == data.paths["bad"]
    entry = next(e for e in data.entries if e.case is case)
    with pytest.raises(DataError) as info:
        read(dataset, entry.index)
    error = info.value
    message = str(error)
    assert error.path == data.paths["bad"] and data.paths["bad"] in message, message
    assert error.line == entry.line and re.search(rf"\bline {entry.line}\b", message), (entry.line, message)
    if case.column is not None:
        names = data.task(skip=False).column_names
        assert case.column in names, (case.column, names)
        assert error.column == case.column and repr(case.column) in message, (case.column, message)


@pytest.mark.parametrize("task", TASKS)
def test_good_rows_of_a_mixed_file_read_without_error(task_data, task):
    data = task_data(task)
    dataset = data.dataset(skip=False, epoch=EPOCH_BAD)
    for entry in data.entries:
        if entry.good is not None:
            assert read(dataset, entry.index) is not None


# ---------------------------------------------------------------------------------------------- (b) skipping


def assert_same_value(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.shape == b.shape and list(a) == list(b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_value(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_value(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("task", TASKS)
def test_skip_invalid_rows_drops_exactly_the_bad_rows(task_data, task, caplog):
    data = task_data(task)
    entries = data.entries
    bad = [e for e in entries if e.case is not None]
    dataset = data.dataset(skip=True, epoch=EPOCH_BAD)
    assert dataset.skip_invalid_rows and dataset.skipped_rows == 0 and len(dataset) == len(entries)
    clean = data.dataset(skip=True, epoch=EPOCH_CLEAN)
    assert clean.tsv.path == data.paths["clean"] and len(clean) == len(data.good_rows)

    with caplog.at_level("WARNING"):
        samples = [read(dataset, i) for i in range(len(dataset))]
    none_rows = {i for i, sample in enumerate(samples) if sample is None}
    assert none_rows == {e.index for e in bad}, [(e.case.name, e.index) for e in bad]
    assert dataset.skipped_rows == len(bad)
    skip_logs = [r.getMessage() for r in caplog.records if "skipping invalid row" in r.getMessage()]
    assert len(skip_logs) == len(bad)
    for entry, log in zip(bad, skip_logs):
        assert f"{data.paths['bad']}, line {entry.line}" in log, log

    clean_samples = [read(clean, i) for i in range(len(clean))]
    assert clean.skipped_rows == 0 and all(s is not None for s in clean_samples)
    for entry in entries:
        if entry.good is None:
            continue
        sample, reference = samples[entry.index], clean_samples[entry.good]
        assert sample["id"] == entry.index and reference["id"] == entry.good
        assert sample.keys() == reference.keys()
        for key in sample:
            if key != "id":
                assert_same_value(sample[key], reference[key], f"row {entry.index} (good {entry.good}) {key}")

    batch, reference_batch = dataset.collater(samples), clean.collater(clean_samples)
    assert batch["nsentences"] == reference_batch["nsentences"] == len(data.good_rows)
    good_indices = [e.index for e in entries if e.good is not None]
    assert list(batch["id"]) == good_indices and list(reference_batch["id"]) == list(range(len(data.good_rows)))
    assert batch.keys() == reference_batch.keys()
    for key in batch:
        if key != "id":
            assert_same_value(batch[key], reference_batch[key], f"batch {key}")


@pytest.mark.parametrize("task", TASKS)
def test_all_bad_batch_collates_to_an_empty_dict(task_data, task):
    """A batch whose rows were all skipped collates to `{}`, which fairseq's trainer treats as an empty batch."""
    data = task_data(task)
    dataset = data.dataset(skip=True, epoch=EPOCH_BAD)
    bad = [e.index for e in data.entries if e.case is not None]
    assert dataset.collater([read(dataset, i) for i in bad]) == {}
    assert dataset.skipped_rows == len(bad)


# ---------------------------------------------------------------------------------------------- (c) fairseq-train


@pytest.mark.slow
def test_fairseq_train_skips_invalid_rows(tmp_path):
    """2 bad training rows and 1 bad validation row: training and validation finish, each bad row is logged.

    fairseq reads some rows more than once (its dry-run validation, and the first batch of every iterator
    again for its dummy batch), so a row may be logged more than once: the check is on the distinct rows."""
    train_rows = vqa_rows(24)
    train_rows[5] = setting(5, NOT_BASE64)(train_rows[5])
    train_rows[13] = setting(3, "1.0|!+purple")(train_rows[13])
    valid_rows = vqa_rows(6, seed=1000)
    valid_rows[3] = setting(5, truncated_image)(valid_rows[3])
    train, valid = str(tmp_path / "train.tsv"), str(tmp_path / "valid.tsv")
    write_rows(train, train_rows, blank_after_first=False)
    write_rows(valid, valid_rows, blank_after_first=False)
    cmd = [sys.executable, "-m", "fairseq_cli.train", f"{train},{valid}", "--user-dir",
           os.path.dirname(__import__("biomedgpt").__file__), "--task", "vqa_gen", "--arch", "ofa_tiny", *TINY,
           *TASK_FLAGS["vqa_gen"], "--skip-invalid-rows", "--criterion", "adjust_label_smoothed_cross_entropy",
           "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "8", "--cpu",
           "--max-update", "3", "--no-save", "--log-format", "simple", "--log-interval", "1", "--num-workers", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    skipped = set(re.findall(r"skipping invalid row.*?(\S+\.tsv, line \d+, column '\w+')", log))
    assert skipped == {f"{train}, line 6, column 'image'", f"{train}, line 14, column 'answers'",
                       f"{valid}, line 4, column 'image'"}, skipped
    assert re.search(r"\| train_inner \|.*num_updates=3\b", log), log[-3000:]
    assert re.search(r"valid on 'valid' subset \|.* nsentences 5 \|.* vqa_score [\d.]+", log), log[-3000:]
