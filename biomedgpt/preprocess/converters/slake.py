"""SLAKE 1.0 -> `train.tsv`, `val.tsv`, `test.tsv` (vqa_gen layout) and `trainval_ans2label.json`.

As the reference (`scripts/preprocess/finetuning/slake.py`): English questions only (`q_lang == "en"`; the
Chinese ones are counted as filtered), question and answer kept as written (the task lowercases them),
objects = the `location` field, image id = `img_id`; the answer set holds the English train + validation
answers in order of first appearance.
"""
import os

from .. import VQA_COLUMNS, AnswerSet, Conversion, Item, Report, add_vqa, read_json_list, vqa_row

NAME = "slake"
HELP = "SLAKE 1.0 (English questions only)"
LAYOUT = """\
ROOT/train.json, ROOT/validate.json, ROOT/test.json   lists of {qid, img_id, img_name, question, answer,
    q_lang, location, modality, answer_type, content_type, ...}
ROOT/imgs/<img_name>   (img_name like xmlab0/source.jpg)"""
SPLITS = [("train", "train.json"), ("val", "validate.json"), ("test", "test.json")]
ANSWER_SPLITS = ("train", "val")
ANS2LABEL = "trainval_ans2label.json"


def build_row(item: Item, record, image_dir: str, image_options) -> list:
    item.field(record, "q_lang")  # a record without a language is malformed, not English
    image_name = item.field(record, "img_name", "image")
    image = item.image(os.path.join(image_dir, image_name), image_options)
    return vqa_row(item, item.field(record, "qid"), item.field(record, "img_id"), item.field(record, "question"),
                   item.field(record, "answer"), item.field(record, "location", "objects", allow_empty=True), image)


def convert(root: str, out_dir: str, options=None) -> Report:
    with Conversion(NAME, out_dir, options) as conversion:
        answers = AnswerSet()
        image_dir = os.path.join(root, "imgs")
        for split, filename in SPLITS:
            source = os.path.join(root, filename)
            if not os.path.isfile(source):
                raise FileNotFoundError(f"SLAKE: {source} not found; expected layout:\n{LAYOUT}")
            records = read_json_list(source)
            with conversion.split(split, f"{split}.tsv", VQA_COLUMNS) as sink:
                for index, record in enumerate(records):
                    if isinstance(record, dict) and record.get("q_lang") not in (None, "en"):
                        sink.filter()
                        continue
                    qid = record.get("qid", "?") if isinstance(record, dict) else "?"
                    item = Item(source, None, f"item {index} (qid {qid})")
                    add_vqa(sink, item, lambda: build_row(item, record, image_dir, conversion.options.image),
                            answers if split in ANSWER_SPLITS else None)
        conversion.write_json(ANS2LABEL, answers.labels)
    return conversion.report
