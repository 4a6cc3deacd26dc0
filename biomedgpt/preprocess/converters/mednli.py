"""MedNLI -> `mednli_{train,val,test}.tsv` (mnli layout `sentence1, sentence2, label, genre:sentence1`).

As the reference (`scripts/preprocess/finetuning/mednli.py`): pairs without a gold label (`-`) are dropped
(counted as filtered); label 1 = entailment, 2 = contradiction, 0 = neutral (the mnli task maps them to
yes / no / maybe); tabs in sentences become spaces and sentences are stripped; the fourth column is
`clinical:<sentence1>`. Unlike the reference, an unknown label is an error instead of silently "neutral".
"""
import os

from .. import NLI_COLUMNS, Conversion, Item, Report, iter_json_lines
from ...data.errors import DataError

NAME = "mednli"
HELP = "MedNLI (PhysioNet mli_{train,dev,test}_v1.jsonl)"
LAYOUT = """\
ROOT/mli_train_v1.jsonl, ROOT/mli_dev_v1.jsonl, ROOT/mli_test_v1.jsonl
  one JSON object per line: {sentence1, sentence2, gold_label, pairID, ...}"""
SPLITS = (("train", "mli_train_v1.jsonl"), ("val", "mli_dev_v1.jsonl"), ("test", "mli_test_v1.jsonl"))
LABELS = {"entailment": "1", "contradiction": "2", "neutral": "0"}
GENRE = "clinical"


def build_row(item: Item, record) -> list:
    if isinstance(record, DataError):
        raise record
    label = item.field(record, "gold_label", "label")
    if label not in LABELS:
        raise item.error(f"unknown gold_label {label!r} (expected {', '.join(LABELS)})", "label")
    first = item.field(record, "sentence1").replace("\t", " ").strip()
    second = item.field(record, "sentence2").replace("\t", " ").strip()
    return [first, second, LABELS[label], f"{GENRE}:{first}"]


def convert(root: str, out_dir: str, options=None) -> Report:
    with Conversion(NAME, out_dir, options) as conversion:
        for split, filename in SPLITS:
            source = os.path.join(root, filename)
            if not os.path.isfile(source):
                raise FileNotFoundError(f"MedNLI: {source} not found; expected layout:\n{LAYOUT}")
            with conversion.split(split, f"mednli_{split}.tsv", NLI_COLUMNS) as sink:
                for item, record in iter_json_lines(source):
                    if isinstance(record, dict) and record.get("gold_label") == "-":
                        sink.filter()
                        continue
                    if isinstance(record, dict) and record.get("pairID"):
                        item.label = f"pairID {record['pairID']}"
                    sink.add(item, lambda: build_row(item, record))
    return conversion.report
