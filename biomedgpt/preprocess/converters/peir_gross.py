"""PEIR Gross -> `peir_gross_{train,val,test}.tsv` (caption layout `uniq_id, image_id, caption, objects,
base64`).

Reads bioCaption's layout (the reference's input): `train_images.tsv` / `test_images.tsv` (`file
name<TAB>caption`, file names with extension) and `peir_gross_images/`. The train list is split 80/20 into
train / val like the reference (`ceil(0.8 n)` train rows), but deterministically by the list's order — which
bioCaption already shuffled (seed 42) — instead of the reference's file-system walk order. Unique ids are
`3_<n>` counting rows over all splits; image id = file name without extension.
"""
import math
import os

from .. import CAPTION_COLUMNS, Conversion, Report, RunningId, biocaption_row, iter_delimited

NAME = "peir-gross"
HELP = "PEIR Gross (bioCaption train_images.tsv/test_images.tsv + peir_gross_images/)"
LAYOUT = """\
ROOT/train_images.tsv, ROOT/test_images.tsv   file name<TAB>caption per line (e.g. PEIR_1234.jpg<TAB>...)
ROOT/peir_gross_images/<file name>"""
ID_PREFIX = "3_"
PREFIX = "peir_gross"
TRAIN_FRACTION = 0.8


def add_arguments(parser) -> None:
    parser.add_argument("--train-fraction", type=float, default=TRAIN_FRACTION,
                        help="share of train_images.tsv kept for training, in list order; the rest is val "
                             "(default: %(default)s, as the reference)")


def split_train_val(rows: list, fraction: float):
    """The first `ceil(fraction * n)` rows train, the rest validation (the reference's 80/20 rule)."""
    cut = math.ceil(len(rows) * fraction)
    return rows[:cut], rows[cut:]


def convert(root: str, out_dir: str, options=None, train_fraction: float = TRAIN_FRACTION) -> Report:
    if not 0 < train_fraction <= 1:
        raise ValueError(f"--train-fraction must be in (0, 1], got {train_fraction}")
    lists = [os.path.join(root, name) for name in ("train_images.tsv", "test_images.tsv")]
    missing = [p for p in lists if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"PEIR Gross: {', '.join(missing)} not found; expected layout:\n{LAYOUT}")
    with Conversion(NAME, out_dir, options) as conversion:
        ids = RunningId(ID_PREFIX)
        images = os.path.join(root, "peir_gross_images")
        train, val = split_train_val(list(iter_delimited(lists[0])), train_fraction)
        test = list(iter_delimited(lists[1]))
        for split, rows in (("train", train), ("val", val), ("test", test)):
            with conversion.split(split, f"{PREFIX}_{split}.tsv", CAPTION_COLUMNS) as sink:
                for item, fields in rows:
                    sink.add(item, lambda: biocaption_row(item, fields, images, ids, conversion.options.image))
    return conversion.report
