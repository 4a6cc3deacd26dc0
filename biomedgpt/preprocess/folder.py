"""Generic inputs -> task TSVs: your own image folders, DICOM folders and CSV lists.

* `convert_classify`: class sub-folders (`ROOT/<class>/...`, optionally under `train/`, `val/`, `test/`) or a
  CSV with `path,label[,split]` -> `<split>.tsv` in the image_classify layout (`base64, label_index,
  label_name`; `--selected-cols 0,2`) and `class2label.json` (class names sorted; `--ans2label-file`).
* `convert_caption`: a CSV with `path,caption[,split]` -> `<split>.tsv` in the caption layout (`uniq_id,
  image_id, caption, objects, base64`; `--selected-cols 0,4,2`).
* `convert_pretrain_images`: every image / DICOM file under ROOT -> `images.tsv` (`id, base64`) of the
  background-cropped 256 x 256 images, as the reference's `mim_sample_chexpert_small.py` modes 0 and 2; with
  `mid=True` also `images_mid.tsv` of their central 128 x 128 (mode 1, the part masked in pretraining).
  `biomedgpt-image-codes --input images.tsv --output image.tsv --with-image` then appends the VQ-GAN codes
  of the centre, giving the pretraining `image.tsv` (`id, base64, codes`).

CSV paths are relative to the CSV's folder; a `split` column (train / val / test) spreads rows over files,
otherwise every row goes to `split`. Files are visited in sorted path order, so outputs are reproducible.
"""
import os
from typing import Dict, Iterator, List, Optional, Tuple

from . import (CAPTION_COLUMNS, CLASSIFY_COLUMNS, IMAGE_COLUMNS, Conversion, Item, Options, Report, RunningId,
               image_caption_row, iter_delimited, sniff_delimiter, stem)
from .images import ImageOptions
from ..data.errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}
PATH_COLUMNS = ("path", "image", "file", "filename")


def is_image_file(path: str) -> bool:
    """A known image extension, or an extension-less file with the DICOM preamble."""
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return True
    if ext:
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def image_files(folder: str) -> List[str]:
    """Image files under `folder` (recursive, hidden entries skipped), sorted by path."""
    found = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(current, f) for f in files if not f.startswith(".")
                     and is_image_file(os.path.join(current, f)))
    return sorted(found)


def _subdirs(folder: str) -> List[str]:
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))


def _split_name(value: Optional[str], default: str, item: Item) -> str:
    if value is None or not value.strip():
        return default
    name = SPLIT_NAMES.get(value.strip().lower())
    if name is None:
        raise item.error(f"unknown split {value!r} (use train, val or test)", "split")
    return name


# ---------------------------------------------------------------------------------------------- listings
def folder_listing(root: str, split: str) -> Dict[str, List[Tuple[Item, str, str]]]:
    """`{split: [(item, image path, class name)]}` from class sub-folders (optionally under split folders)."""
    subdirs = _subdirs(root)
    split_dirs = [d for d in subdirs if d.lower() in SPLIT_NAMES]
    groups = [(SPLIT_NAMES[d.lower()], os.path.join(root, d)) for d in split_dirs] if split_dirs else \
        [(split, root)]
    listing: Dict[str, List[Tuple[Item, str, str]]] = {}
    for split_name, folder in groups:
        rows = listing.setdefault(split_name, [])
        for label in _subdirs(folder):
            for path in image_files(os.path.join(folder, label)):
                rows.append((Item(path, None, ""), path, label))
    if not any(listing.values()):
        raise FileNotFoundError(f"no images in class sub-folders of {root} (expected ROOT/<class>/<image> or "
                                f"ROOT/<split>/<class>/<image>)")
    return listing


def csv_listing(path: str, value_column: str, split: str) -> Dict[str, List[Tuple[Item, str, Optional[str]]]]:
    """`{split: [(item, image path, value)]}` from a CSV/TSV with a header naming the path and `value_column`."""
    rows = list(iter_delimited(path, sniff_delimiter(path), header=True, quoted=True))
    if not rows:
        raise DataError(path, None, "no rows")
    names = list(rows[0][1])
    path_column = next((c for c in PATH_COLUMNS if c in names), None)
    if path_column is None or value_column not in names:
        raise DataError(path, 1, f"the header needs a path column ({' or '.join(PATH_COLUMNS)}) and a "
                                 f"{value_column!r} column; it has {', '.join(names)}")
    base = os.path.dirname(os.path.abspath(path))
    listing: Dict[str, List[Tuple[Item, str, Optional[str]]]] = {}
    for item, record in rows:
        relative = (record.get(path_column) or "").strip()
        item.label = relative
        try:
            split_name = _split_name(record.get("split"), split, item)
        except DataError as exc:
            listing.setdefault(split, []).append((item, "", exc))
            continue
        listing.setdefault(split_name, []).append((item, os.path.join(base, relative) if relative else "",
                                                   record.get(value_column)))
    return listing


def _require_value(item: Item, image_path: str, value, column: str) -> str:
    if isinstance(value, DataError):
        raise value
    if not image_path:
        raise item.error("empty image path", "image")
    if value is None or not str(value).strip():
        raise item.error(f"empty {column}", column)
    return str(value).strip()


# ---------------------------------------------------------------------------------------------- converters
def convert_classify(root: str, out_dir: str, options: Optional[Options] = None, split: str = "train") -> Report:
    """Image classification TSVs from class folders or a `path,label[,split]` CSV (see the module notes)."""
    listing = csv_listing(root, "label", split) if os.path.isfile(root) else folder_listing(root, split)
    classes = sorted({str(v).strip() for rows in listing.values() for _, _, v in rows
                      if isinstance(v, str) and v.strip()})
    index = {name: i for i, name in enumerate(classes)}
    with Conversion("folder-classify", out_dir, options) as conversion:
        for split_name in sorted(listing, key=list(SPLIT_NAMES.values()).index):
            with conversion.split(split_name, f"{split_name}.tsv", CLASSIFY_COLUMNS) as sink:
                for item, path, value in listing[split_name]:
                    def build(item=item, path=path, value=value):
                        label = _require_value(item, path, value, "label_name")
                        return [item.image(path, conversion.options.image), str(index[label]), label]
                    sink.add(item, build)
        conversion.write_json("class2label.json", dict(index))
    return conversion.report


def convert_caption(root: str, out_dir: str, options: Optional[Options] = None, split: str = "train",
                    id_prefix: str = "") -> Report:
    """Caption TSVs from a `path,caption[,split]` CSV (see the module notes)."""
    if not os.path.isfile(root):
        raise FileNotFoundError(f"folder-caption needs a CSV/TSV file with path and caption columns, got {root}")
    listing = csv_listing(root, "caption", split)
    with Conversion("folder-caption", out_dir, options) as conversion:
        ids = RunningId(id_prefix)
        for split_name in sorted(listing, key=list(SPLIT_NAMES.values()).index):
            with conversion.split(split_name, f"{split_name}.tsv", CAPTION_COLUMNS) as sink:
                for item, path, value in listing[split_name]:
                    def build(item=item, path=path, value=value):
                        caption = _require_value(item, path, value, "caption")
                        return image_caption_row(item, ids, path, stem(path), caption, conversion.options.image)
                    sink.add(item, build)
    return conversion.report


def _pretrain_rows(root: str) -> Iterator[Tuple[Item, str]]:
    files = image_files(root) if os.path.isdir(root) else []
    if not files:
        raise FileNotFoundError(f"no image or DICOM files under {root}")
    for path in files:
        yield Item(path, None, ""), path


def convert_pretrain_images(root: str, out_dir: str, options: Optional[Options] = None, size: int = 256,
                            crop_background: bool = True, mid: bool = False, id_prefix: str = "") -> Report:
    """`images.tsv` (`id, base64` of the cropped `size` x `size` image) and, with `mid`, `images_mid.tsv` (its
    central half) from every image under `root`; the image format of `options.image` is used for both."""
    options = options or Options()
    full = ImageOptions(crop_background=crop_background, size=size, format=options.image.format,
                        jpeg_quality=options.image.jpeg_quality)
    middle = ImageOptions(crop_background=crop_background, size=size, center_fraction=0.5,
                          format=options.image.format, jpeg_quality=options.image.jpeg_quality)
    with Conversion("pretrain-images", out_dir, options) as conversion:
        outputs = [("images", "images.tsv", full)] + ([("images_mid", "images_mid.tsv", middle)] if mid else [])
        for name, filename, image_options in outputs:
            ids = RunningId(id_prefix)
            with conversion.split(name, filename, IMAGE_COLUMNS) as sink:
                for item, path in _pretrain_rows(root):
                    number = ids.next()  # the same id for the same file in both outputs, also when one is skipped
                    sink.add(item, lambda: [number, item.image(path, image_options)])
    return conversion.report
