"""ROCO -> `roco_{train,val,test}.tsv` (caption layout `uniq_id, image_id, caption, objects, base64`).

Reads the layout of github.com/razorx89/roco-dataset after `scripts/fetch.py`:
`data/{train,validation,test}/{radiology,non-radiology}/captions*.txt` (`ROCO_xxxxx<TAB> caption`) with the
images in `images/` next to it. `fetch.py` names images `<PMCID>_<figure file>` (from `dlinks.txt`); the
reference expected `images/ROCO_xxxxx.jpg` (a renamed copy); both are found. A CSV with `id` and `caption`
columns (and optionally `name`, the image file) may replace `captions.txt`. Only the radiology subset is read
unless `--subset` says otherwise (the reference walked every `captions.txt` under `data/`). Unique ids are
`1500_<n>` counting rows over all splits; image id = the ROCO id; captions are stripped of surrounding spaces.
"""
import glob
import os
from typing import Dict, Iterator, Tuple

from .. import CAPTION_COLUMNS, Conversion, Item, Report, RunningId, image_caption_row, iter_delimited

NAME = "roco"
HELP = "ROCO (razorx89/roco-dataset data/ folders after fetch.py)"
LAYOUT = """\
ROOT/data/{train,validation,test}/radiology/captions.txt   ROCO_xxxxx<TAB>caption  (ROOT may also be data/)
ROOT/data/<split>/radiology/images/<PMCID>_<file>.jpg (named by dlinks.txt) or images/ROCO_xxxxx.jpg
  (a CSV with id, name, caption columns may replace captions.txt)"""
ID_PREFIX = "1500_"
PREFIX = "roco"
SPLITS = (("train", "train"), ("val", "validation"), ("test", "test"))
SUBSETS = {"radiology": ["radiology"], "non-radiology": ["non-radiology"], "all": ["radiology", "non-radiology"]}


def add_arguments(parser) -> None:
    parser.add_argument("--subset", choices=sorted(SUBSETS), default="radiology",
                        help="which images to convert (default: %(default)s)")


def data_dir(root: str) -> str:
    for candidate in (os.path.join(root, "data"), root):
        if os.path.isdir(os.path.join(candidate, "train")):
            return candidate
    raise FileNotFoundError(f"ROCO: no train/ folder in {root} or {os.path.join(root, 'data')}; expected "
                            f"layout:\n{LAYOUT}")


def dlinks_names(folder: str) -> Dict[str, str]:
    """ROCO id -> image file name as fetch.py saves it (`<PMCID>_<figure file>`), from dlinks*.txt."""
    names = {}
    for path in sorted(glob.glob(os.path.join(folder, "dlinks*.txt"))):
        for _, fields in iter_delimited(path):  # ROCO_xxxxx<TAB>wget -r ftp://.../PMCID.tar.gz -P dir<TAB>file
            archives = [w for w in fields[1].split() if w.endswith(".tar.gz")] if len(fields) >= 3 else []
            if archives:
                pmcid = os.path.basename(archives[0])[: -len(".tar.gz")]
                names[fields[0].strip()] = f"{pmcid}_{fields[-1].strip()}"
    return names


def caption_records(folder: str) -> Iterator[Tuple[Item, str, str, str]]:
    """`(item, ROCO id, caption, image file name or "")` from captions.txt or a CSV with id/caption columns."""
    lists = sorted(glob.glob(os.path.join(folder, "captions*.txt")))  # test/non-radiology: captions_fp_..._revised
    if lists:
        for item, fields in iter_delimited(lists[0]):
            roco_id = fields[0].strip()
            item.label = roco_id
            yield item, roco_id, " ".join(f.strip() for f in fields[1:]).strip(), ""
        return
    for path in sorted(glob.glob(os.path.join(folder, "*.csv"))):
        rows = iter_delimited(path, ",", header=True)
        first = next(rows, None)
        if first is None or not {"id", "caption"} <= set(first[1]):
            continue
        for item, record in [first, *rows]:
            roco_id = (record.get("id") or "").strip()
            item.label = roco_id
            yield item, roco_id, (record.get("caption") or "").strip(), (record.get("name") or "").strip()
        return
    raise FileNotFoundError(f"ROCO: no captions.txt (or CSV with id and caption columns) in {folder}")


def image_path(folder: str, roco_id: str, name: str, fetched: Dict[str, str]) -> str:
    images = os.path.join(folder, "images")
    candidates = [os.path.join(images, name)] if name else []
    candidates.append(os.path.join(images, roco_id + ".jpg"))
    if roco_id in fetched:
        candidates.append(os.path.join(images, fetched[roco_id]))
    return next((c for c in candidates if os.path.isfile(c)), candidates[0])


def build_row(item: Item, roco_id: str, caption: str, path: str, ids: RunningId, options) -> list:
    if not roco_id:
        raise item.error("missing ROCO id", "image_id")
    if not caption:
        raise item.error("empty caption", "caption")
    return image_caption_row(item, ids, path, roco_id, caption, options)


def convert(root: str, out_dir: str, options=None, subset: str = "radiology") -> Report:
    base = data_dir(root)
    with Conversion(NAME, out_dir, options) as conversion:
        ids = RunningId(ID_PREFIX)
        for split, folder_name in SPLITS:
            with conversion.split(split, f"{PREFIX}_{split}.tsv", CAPTION_COLUMNS) as sink:
                for kind in SUBSETS[subset]:
                    folder = os.path.join(base, folder_name, kind)
                    if not os.path.isdir(folder):
                        raise FileNotFoundError(f"ROCO: {folder} not found; expected layout:\n{LAYOUT}")
                    fetched = dlinks_names(folder)
                    for item, roco_id, caption, name in caption_records(folder):
                        path = image_path(folder, roco_id, name, fetched)
                        sink.add(item, lambda: build_row(item, roco_id, caption, path, ids, conversion.options.image))
    return conversion.report
