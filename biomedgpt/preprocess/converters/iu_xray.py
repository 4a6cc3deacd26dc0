"""IU X-ray -> `iu_xray_{train,val,test}.tsv` (caption layout `uniq_id, image_id, caption, objects, base64`).

Two layouts are read:

* R2Gen's `annotation.json` (`{"train"|"val"|"test": [{id, report, image_path: [...], split}]}` + `images/`):
  one row per image of a study, each with the study's report; image id = the image path without extension.
* bioCaption's (the reference's input: `train_images.tsv`, `test_images.tsv` = `file name<TAB>caption`,
  images in `iu_xray_images/`): train and test only; image id = file name without extension.

Unique ids are `200_<n>` with `n` counting rows over all splits (the reference restarted `n` in each file, so
train and test ids overlapped). Captions are kept as written (the task removes punctuation).
"""
import os

from .. import (CAPTION_COLUMNS, Conversion, Item, Report, RunningId, biocaption_row, image_caption_row,
                iter_delimited, read_json)
from ...data.errors import DataError

NAME = "iu-xray"
HELP = "IU X-ray (R2Gen annotation.json + images/, or bioCaption train_images.tsv/test_images.tsv)"
LAYOUT = """\
ROOT/annotation.json  {"train": [{"id", "report", "image_path": ["CXR.../0.png", ...], "split"}], "val": [...],
                       "test": [...]}  +  ROOT/images/<image_path>
or ROOT/train_images.tsv, ROOT/test_images.tsv (file<TAB>caption)  +  ROOT/iu_xray_images/<file>"""
ID_PREFIX = "200_"
PREFIX = "iu_xray"


def study_images(item: Item, record) -> list:
    paths = record.get("image_path") if isinstance(record, dict) else None
    if not isinstance(paths, list) or not paths:
        raise item.error("missing or empty field 'image_path'", "image")
    return [str(p) for p in paths]


def convert_r2gen(conversion: Conversion, root: str, ids: RunningId) -> None:
    source = os.path.join(root, "annotation.json")
    data = read_json(source)
    images = os.path.join(root, "images")
    for split in ("train", "val", "test"):
        records = data.get(split) if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise DataError(source, None, f"expected an object with a {split!r} list")
        with conversion.split(split, f"{PREFIX}_{split}.tsv", CAPTION_COLUMNS) as sink:
            for index, record in enumerate(records):
                study = record.get("id", "?") if isinstance(record, dict) else "?"
                item = Item(source, None, f"{split} item {index} (id {study})")
                try:
                    paths = study_images(item, record)
                except DataError as exc:
                    sink.fail(exc)
                    continue
                for path in paths:
                    sink.add(item, lambda: image_caption_row(
                        item, ids, os.path.join(images, path), os.path.splitext(path)[0],
                        item.field(record, "report", "caption"), conversion.options.image))


def convert_biocaption(conversion: Conversion, root: str, ids: RunningId) -> None:
    images = os.path.join(root, "iu_xray_images")
    for split, filename in (("train", "train_images.tsv"), ("test", "test_images.tsv")):
        with conversion.split(split, f"{PREFIX}_{split}.tsv", CAPTION_COLUMNS) as sink:
            for item, fields in iter_delimited(os.path.join(root, filename)):
                sink.add(item, lambda: biocaption_row(item, fields, images, ids, conversion.options.image))


def convert(root: str, out_dir: str, options=None) -> Report:
    with Conversion(NAME, out_dir, options) as conversion:
        ids = RunningId(ID_PREFIX)
        if os.path.isfile(os.path.join(root, "annotation.json")):
            convert_r2gen(conversion, root, ids)
        elif os.path.isfile(os.path.join(root, "train_images.tsv")):
            convert_biocaption(conversion, root, ids)
        else:
            raise FileNotFoundError(f"IU X-ray: neither annotation.json nor train_images.tsv in {root}; expected "
                                    f"layout:\n{LAYOUT}")
    return conversion.report
