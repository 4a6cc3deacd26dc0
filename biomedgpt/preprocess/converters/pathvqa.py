"""PathVQA -> `train.tsv`, `val.tsv`, `test.tsv` (vqa_gen layout) and `trainval_ans2label.json`.

Reads either pickle layout of the official release (plain lists of dicts; loaded without executing anything):
`qas/<split>/<split>_qa.pkl` ({image, question, answer}) or the LXMERT-style `qas/<split>_vqa.pkl`
({img_id, question_id, sent, label: {answer: score}}; the reference's input, whose answer is the first
label). Text is kept as written (the task lowercases questions); objects are empty. The answer set holds the
train + val answers in order of first appearance (the reference used the release's own
`trainval_ans2label.pkl`, built the same way from the same splits).
"""
import os

from .. import VQA_COLUMNS, AnswerSet, Conversion, Item, Report, add_vqa, find_image, read_pickle, vqa_row
from ...data.errors import DataError

NAME = "pathvqa"
HELP = "PathVQA (official pickles: qas/<split>/<split>_qa.pkl or qas/<split>_vqa.pkl)"
LAYOUT = """\
ROOT/qas/{train,val,test}/{split}_qa.pkl   lists of {image, question, answer}
  or ROOT/qas/{split}_vqa.pkl              lists of {img_id, question_id, sent, label: {answer: score}}
  (ROOT/split/qas/... is accepted too)
ROOT/images/{split}/<image>.jpg (or .png)"""
SPLITS = ("train", "val", "test")
ANSWER_SPLITS = ("train", "val")
ANS2LABEL = "trainval_ans2label.json"


def find_pickle(root: str, split: str) -> str:
    for base in (root, os.path.join(root, "split")):
        for candidate in (os.path.join(base, "qas", split, f"{split}_qa.pkl"),
                          os.path.join(base, "qas", f"{split}_vqa.pkl")):
            if os.path.isfile(candidate):
                return candidate
    raise FileNotFoundError(f"PathVQA: no question pickle for split {split!r} under {root}; expected layout:\n"
                            f"{LAYOUT}")


def image_root(root: str) -> str:
    for base in (root, os.path.join(root, "split")):
        if os.path.isdir(os.path.join(base, "images")):
            return os.path.join(base, "images")
    return os.path.join(root, "images")


def build_row(item: Item, record, split: str, index: int, images: str, image_options) -> list:
    if isinstance(record, dict) and "sent" in record:  # LXMERT-style record
        image_id = item.field(record, "img_id", "image")
        question = item.field(record, "sent", "question")
        labels = record.get("label")
        if not isinstance(labels, dict) or not labels:
            raise item.error("missing or empty field 'label' (answer -> score)", "answer")
        answer = str(next(iter(labels))).strip()
        question_id = item.field(record, "question_id")
    else:
        image_id = item.field(record, "image", "image")
        question = item.field(record, "question")
        answer = item.field(record, "answer")
        question_id = f"{split}_{index}"
    image = item.image(find_image(os.path.join(images, split), image_id), image_options)
    return vqa_row(item, question_id, image_id, question, answer, "", image)


def convert(root: str, out_dir: str, options=None) -> Report:
    with Conversion(NAME, out_dir, options) as conversion:
        answers = AnswerSet()
        images = image_root(root)
        for split in SPLITS:
            source = find_pickle(root, split)
            records = read_pickle(source)
            if not isinstance(records, list):
                raise DataError(source, None, f"expected a list of question records, got {type(records).__name__}")
            with conversion.split(split, f"{split}.tsv", VQA_COLUMNS) as sink:
                for index, record in enumerate(records):
                    item = Item(source, None, f"item {index}")
                    add_vqa(sink, item, lambda: build_row(item, record, split, index, images, conversion.options.image),
                            answers if split in ANSWER_SPLITS else None)
        conversion.write_json(ANS2LABEL, answers.labels)
    return conversion.report
