"""MedMNIST (v2 `.npz`) -> `<name>mnist_{train,val,test}.tsv` (image_classify layout `base64, label_index,
label_name`) and `<name>mnist_class2label.json` ({class name: "index"}, string indices as the reference's
pickles).

Images become RGB PNGs as in the reference (`Image.fromarray(...).convert("RGB")`), in array order (the
reference's order followed the file system). Class names are MedMNIST's own (`medmnist.INFO`), hard-coded for
the single-label 2-D datasets; BiomedGPT fine-tuned on blood, breast, derma, path and pneumonia and shipped
class files for those plus oct and organc.
"""
import os
from typing import List

import numpy as np

from .. import CLASSIFY_COLUMNS, Conversion, Item, Report
from ...data.errors import DataError
from ..images import array_to_image, encode_image

NAME = "medmnist"
HELP = "MedMNIST v2 2-D single-label datasets (<name>mnist.npz)"
LAYOUT = """\
ROOT/<name>mnist.npz with train_images, train_labels, val_images, val_labels, test_images, test_labels
  (images N x H x W or N x H x W x 3 uint8; labels N x 1), name in: """
_ORGANS = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
           "lung-right", "pancreas", "spleen"]
CLASS_NAMES = {
    "blood": ["basophil", "eosinophil", "erythroblast",
              "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte", "monocyte",
              "neutrophil", "platelet"],
    "breast": ["malignant", "normal, benign"],
    "derma": ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
              "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions"],
    "oct": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "organa": _ORGANS,
    "organc": _ORGANS,
    "organs": _ORGANS,
    "path": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
             "cancer-associated stroma", "colorectal adenocarcinoma epithelium"],
    "pneumonia": ["normal", "pneumonia"],
}
LAYOUT += ", ".join(sorted(CLASS_NAMES))
SPLITS = ("train", "val", "test")


def add_arguments(parser) -> None:
    parser.add_argument("--subset", action="append", choices=sorted(CLASS_NAMES), metavar="NAME",
                        help=f"dataset to convert (repeatable; default: every known .npz present in ROOT): "
                             f"{', '.join(sorted(CLASS_NAMES))}")


def find_npz(root: str, name: str):
    for filename in (f"{name}mnist.npz", f"{name}.npz"):
        if os.path.isfile(os.path.join(root, filename)):
            return os.path.join(root, filename)
    return None


def open_npz(path: str):
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(path, None, f"not a readable .npz archive ({type(exc).__name__}: {exc})") from None


def read_array(archive, path: str, key: str) -> np.ndarray:
    if key not in archive.files:
        raise DataError(path, None, f"missing array {key!r} (has: {', '.join(sorted(archive.files))})")
    try:
        return archive[key]
    except Exception as exc:
        raise DataError(path, None, f"array {key!r} is unreadable ({type(exc).__name__}: {exc})") from None


def convert_one(conversion: Conversion, name: str, path: str) -> None:
    with open_npz(path) as archive:
        convert_splits(conversion, name, path, archive)
    conversion.write_json(f"{name}mnist_class2label.json", {c: str(i) for i, c in enumerate(CLASS_NAMES[name])})


def convert_splits(conversion: Conversion, name: str, path: str, archive) -> None:
    classes = CLASS_NAMES[name]
    for split in SPLITS:  # one split in memory at a time (the 224 x 224 MedMNIST+ files are large)
        images, labels = read_array(archive, path, f"{split}_images"), read_array(archive, path, f"{split}_labels")
        labels = labels.reshape(len(labels), -1)
        if len(images) != len(labels):
            raise DataError(path, None, f"{len(images)} {split} images but {len(labels)} labels")
        with conversion.split(f"{name} {split}", f"{name}mnist_{split}.tsv", CLASSIFY_COLUMNS) as sink:
            for index in range(len(images)):
                item = Item(path, None, f"{split} item {index}")

                def build(index=index, item=item) -> List[str]:
                    if labels.shape[1] != 1:
                        raise item.error(f"{labels.shape[1]} labels per image (multi-label data is not supported)",
                                         "label_index")
                    label = int(labels[index, 0])
                    if not 0 <= label < len(classes):
                        raise item.error(f"label {label} outside 0..{len(classes) - 1}", "label_index")
                    image = encode_image(array_to_image(images[index]), conversion.options.image)
                    return [image, str(label), classes[label]]

                sink.add(item, build)


def convert(root: str, out_dir: str, options=None, subset=None) -> Report:
    with Conversion(NAME, out_dir, options) as conversion:
        names = subset or [n for n in sorted(CLASS_NAMES) if find_npz(root, n)]
        if not names:
            raise FileNotFoundError(f"MedMNIST: no known .npz file in {root}; expected layout:\n{LAYOUT}")
        for name in names:
            path = find_npz(root, name)
            if path is None:
                raise FileNotFoundError(f"MedMNIST: {os.path.join(root, name + 'mnist.npz')} not found")
            convert_one(conversion, name, path)
    return conversion.report
