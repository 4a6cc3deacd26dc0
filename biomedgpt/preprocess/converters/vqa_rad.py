"""VQA-RAD -> `train.tsv`, `test.tsv` (vqa_gen layout) and `trainval_ans2label.json`.

As the reference (`scripts/preprocess/finetuning/vqa_rad.py`): question and answer lowercased, tabs removed,
stripped; objects = the image organ (lowercased); answer confidence 1; the answer set holds every answer of
train *and* test in order of first appearance (the PubMedCLIP convention the reference follows; its name says
"trainval" as the reference's file does). VQA-RAD has no validation split: train on `train.tsv,test.tsv`.
"""
import os

from .. import VQA_COLUMNS, AnswerSet, Conversion, Item, Report, add_vqa, read_json_list, stem, vqa_row

NAME = "vqa-rad"
HELP = "VQA-RAD (OSF public JSON, or the MEVF/PubMedCLIP trainset.json/testset.json split)"
LAYOUT = """\
ROOT/VQA_RAD Dataset Public.json   list of {qid, image_name, question, answer, image_organ, phrase_type, ...}
ROOT/VQA_RAD Image Folder/<image_name>   test = phrase_type test_freeform / test_para, train = the rest
or (data_RAD of MEVF / PubMedCLIP, the reference's input):
ROOT/trainset.json, ROOT/testset.json (same records), ROOT/images/<image_name>"""
PUBLIC_JSON = "VQA_RAD Dataset Public.json"
PUBLIC_IMAGES = "VQA_RAD Image Folder"
ANS2LABEL = "trainval_ans2label.json"


def clean(text: str) -> str:
    """The reference's normalisation of question, answer and organ."""
    return text.replace("\t", "").lower().strip()


def find_splits(root: str):
    """`[(split, json path, records, image folder)]` for whichever layout ROOT has."""
    train, test = os.path.join(root, "trainset.json"), os.path.join(root, "testset.json")
    if os.path.isfile(train):
        images = os.path.join(root, "images")
        return [("train", train, read_json_list(train), images), ("test", test, read_json_list(test), images)]
    public = os.path.join(root, PUBLIC_JSON)
    if not os.path.isfile(public):
        raise FileNotFoundError(f"VQA-RAD: neither {public} nor {train} found; expected layout:\n{LAYOUT}")
    records = read_json_list(public)
    images = os.path.join(root, PUBLIC_IMAGES)
    test_flags = [isinstance(r, dict) and str(r.get("phrase_type", "")).startswith("test") for r in records]
    return [("train", public, [r for r, t in zip(records, test_flags) if not t], images),
            ("test", public, [r for r, t in zip(records, test_flags) if t], images)]


def build_row(item: Item, record, image_dir: str, image_options) -> list:
    image_name = item.field(record, "image_name", "image")
    question = clean(item.field(record, "question"))
    answer = clean(item.field(record, "answer"))
    if not question or not answer:
        raise item.error("empty after removing tabs", "question" if not question else "answer")
    organ = clean(str(record.get("image_organ") or ""))
    image = item.image(os.path.join(image_dir, image_name), image_options)
    return vqa_row(item, item.field(record, "qid"), stem(image_name), question, answer, organ, image)


def convert(root: str, out_dir: str, options=None) -> Report:
    with Conversion(NAME, out_dir, options) as conversion:
        answers = AnswerSet()
        for split, source, records, image_dir in find_splits(root):
            with conversion.split(split, f"{split}.tsv", VQA_COLUMNS) as sink:
                for index, record in enumerate(records):
                    qid = record.get("qid", "?") if isinstance(record, dict) else "?"
                    item = Item(source, None, f"item {index} (qid {qid})")
                    add_vqa(sink, item, lambda: build_row(item, record, image_dir, conversion.options.image), answers)
        conversion.write_json(ANS2LABEL, answers.labels)
    return conversion.report
