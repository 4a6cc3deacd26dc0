"""Small synthetic TSVs in BiomedGPT's layouts, for end-to-end task tests (learnable: the answer depends on
the image colour or on the text)."""
import base64
import io
import os

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def image_b64(colour: str, size: int = 32, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    array = np.clip(np.array(COLOURS[colour])[None, None, :] + rng.normal(0, 10, (size, size, 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _write(path, rows):
    with open(path, "w") as handle:
        for row in rows:
            handle.write("\t".join(row) + "\n")
    return str(path)


def vqa_rows(n, seed=0):
    """`question_id, image_id, question, conf|!+answer, objects, base64` (--selected-cols 0,5,2,3,4)."""
    names = list(COLOURS)
    return [[str(i), f"img{i}", "what colour is the image?", f"1.0|!+{names[i % 3]}", "",
             image_b64(names[i % 3], seed=seed + i)] for i in range(n)]


def classify_rows(n, seed=0):
    """`base64, label_index, label_name` (--selected-cols 0,2)."""
    names = list(COLOURS)
    return [[image_b64(names[i % 3], seed=seed + i), str(i % 3), names[i % 3]] for i in range(n)]


def caption_rows(n, seed=0):
    """`uniq_id, image_id, caption, objects, base64` (--selected-cols 0,4,2)."""
    names = list(COLOURS)
    return [[str(i), f"img{i}", f"a {names[i % 3]} square", "", image_b64(names[i % 3], seed=seed + i)]
            for i in range(n)]


def nli_rows(n):
    """`sentence1, sentence2, label` with label 1 (yes) when the sentences are equal, 2 (no) otherwise."""
    words = ["fever", "cough", "pain", "rash"]
    rows = []
    for i in range(n):
        a = words[i % 4]
        b = a if i % 2 == 0 else words[(i + 1) % 4]
        rows.append([f"the patient has {a}", f"the patient has {b}", "1" if a == b else "2"])
    return rows


def summary_rows(n):
    """`source, target`: the target is the first three words of the source."""
    words = ["fever", "cough", "pain", "rash", "headache", "nausea"]
    return [[f"{words[i % 6]} {words[(i + 1) % 6]} {words[(i + 2) % 6]} since yesterday what should i do",
             f"{words[i % 6]} {words[(i + 1) % 6]} {words[(i + 2) % 6]}"] for i in range(n)]


def snli_rows(n, seed=0):
    """`uniq_id, image, hypothesis, caption, label`: entailment when the hypothesis names the image colour."""
    names = list(COLOURS)
    rows = []
    for i in range(n):
        colour, said = names[i % 3], names[(i // 3) % 3]
        label = "entailment" if colour == said else "contradiction"
        rows.append([str(i), image_b64(colour, seed=seed + i), f"a {said} image", f"a {colour} image", label])
    return rows


def refcoco_rows(n, seed=0, size=48):
    """`uniq_id, image, text, "x0,y0,x1,y1"`: a red square on grey at a random place."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        array = np.full((size, size, 3), 128, dtype=np.uint8)
        x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
        x1, y1 = x0 + size // 3, y0 + size // 3
        array[y0:y1, x0:x1] = COLOURS["red"]
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        rows.append([str(i), base64.b64encode(buffer.getvalue()).decode(), "the red square", f"{x0},{y0},{x1},{y1}"])
    return rows


def write_task_data(folder, task: str, train: int = 24, valid: int = 6):
    """Write train.tsv and valid.tsv for `task`; returns the comma-separated DATA argument."""
    make = {"vqa_gen": vqa_rows, "image_classify": classify_rows, "caption": caption_rows, "snli_ve": snli_rows,
            "refcoco": refcoco_rows}.get(task)
    if make is not None:
        train_rows, valid_rows = make(train), make(valid, seed=1000)
    elif task == "mnli":
        train_rows, valid_rows = nli_rows(train), nli_rows(valid)
    else:
        train_rows, valid_rows = summary_rows(train), summary_rows(valid)
    paths = [_write(os.path.join(folder, "train.tsv"), train_rows), _write(os.path.join(folder, "valid.tsv"), valid_rows)]
    return ",".join(paths)


def vision_language_rows(n, seed=0):
    """Pretraining `uniq_id, image, caption, question, refs, gt_objects, dataset_name, type` rows, cycling through
    caption, qa and visual_grounding (a red square on grey, box in pixels)."""
    names = list(COLOURS)
    squares = refcoco_rows(n, seed=seed)
    rows = []
    for i in range(n):
        colour = names[(i // 3) % 3]
        kind = ("caption", "qa", "visual_grounding")[i % 3]
        if kind == "visual_grounding":
            _, image, text, box = squares[i]
            rows.append([f"vg{i}", image, text, "", box, "square", "synthetic", kind])
        elif kind == "qa":
            rows.append([f"qa{i}", image_b64(colour, seed=seed + i), "", "what colour is the square?",
                         f"1.0|!+{colour}&&0.5|!+dark {colour}", "square", "synthetic", kind])
        else:
            rows.append([f"cap{i}", image_b64(colour, seed=seed + i), f"a {colour} square on grey", "", "",
                         "square&&grey", "synthetic", kind])
    return rows


def text_rows(n):
    """`id, text` rows for text infilling."""
    words = ["the", "chest", "x-ray", "shows", "no", "acute", "cardiopulmonary", "abnormality", "heart", "size",
             "is", "normal"]
    return [[str(i), " ".join(words[(i + k) % len(words)] for k in range(8 + i % 5)).capitalize() + "."]
            for i in range(n)]


def detection_rows(n, seed=0, size=64):
    """`id, image, "x0,y0,x1,y1,cat_id,name&&..."`: one or two coloured squares on grey."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows = []
    for i in range(n):
        array = np.full((size, size, 3), 128, dtype=np.uint8)
        items = []
        for k in range(1 + i % 2):
            x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
            x1, y1 = x0 + size // 4, y0 + size // 4
            colour = names[(i + k) % 3]
            array[y0:y1, x0:x1] = COLOURS[colour]
            items.append(f"{x0},{y0},{x1},{y1},{(i + k) % 3},{colour} square")
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        rows.append([f"det{i}", base64.b64encode(buffer.getvalue()).decode(), "&&".join(items)])
    return rows


def write_pretrain_sources(folder, rows: int = 24):
    """vision_language.tsv, text.tsv, detection.tsv and the image source `images.tsv` (`id, base64`) of a tiny
    pretraining corpus; `image.tsv` (with codes) is made from `images.tsv` by biomedgpt-image-codes."""
    names = list(COLOURS)
    return {
        "vision_language": _write(os.path.join(folder, "vision_language.tsv"), vision_language_rows(rows)),
        "text": _write(os.path.join(folder, "text.tsv"), text_rows(rows)),
        "detection": _write(os.path.join(folder, "detection.tsv"), detection_rows(rows // 2)),
        "images": _write(os.path.join(folder, "images.tsv"),
                         [[f"im{i}", image_b64(names[i % 3], size=64, seed=i)] for i in range(rows // 2)]),
    }
