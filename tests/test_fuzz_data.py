"""Fuzzed bad input (hypothesis) for `IndexedTSV` and every task's dataset.

Each example writes a TSV of random rows: good synthetic rows, some changed by random mutations (column counts,
invalid UTF-8, tabs / newlines / CRs inside fields, random text, answers, labels, boxes, VQ-GAN codes, and images:
truncated or bit-flipped base64, zero-size / huge-dimension headers, grayscale, 16-bit, 32-bit, float with NaN,
CMYK, palette, bilevel, RGBA, GIF/TIFF/WEBP/BMP, valid and malformed DICOM), with random blank lines between rows.

For each file, reading every row of the training (or validation) dataset must

* give a sample, or raise `DataError` naming the file, the row's 1-based physical line (computed here from the
  bytes written) and, where one column is at fault, a column of the task; no other exception;
* fail for every row an independent validity check here calls bad (wrong UTF-8, too few columns, empty text,
  non-base64 image, malformed answers / labels / boxes, ...), and succeed for every untouched good row;
* with `--skip-invalid-rows`: give `None` for exactly the failing rows, count exactly that many skipped rows, and
  give samples bit-identical to a clean file holding only the rows that succeeded (for `unify_task`, whose
  samples depend on the row index: the same file with the failing rows replaced by a good row, and fixed
  `--neg-sample-dir` negatives; with negatives derived from the data instead, the same rows fail).

CI runs a fixed (derandomized) set of `BIOMEDGPT_FUZZ_EXAMPLES` examples per test (default 30; each example is a
file of 1-10 rows). `BIOMEDGPT_FUZZ_LONG=1` draws fresh random examples (default 300 per test); the campaign
`bench/reliability_fuzz.py` runs that and prints the counts kept in `BIOMEDGPT_FUZZ_STATS` (a JSON file).
"""
import base64
import collections
import io
import itertools
import json
import math
import os
import random
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from PIL import Image

from synthetic import (COLOURS, caption_rows, classify_rows, detection_rows, image_b64, nli_rows, refcoco_rows,
                       snli_rows, summary_rows, text_rows, vision_language_rows, vqa_rows)

from biomedgpt.data.errors import DataError
from biomedgpt.data.tsv import IndexedTSV

LONG = os.environ.get("BIOMEDGPT_FUZZ_LONG", "") not in ("", "0")
EXAMPLES = int(os.environ.get("BIOMEDGPT_FUZZ_EXAMPLES", "300" if LONG else "30"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not LONG, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
# deadline=None: the CI machine is shared, so per-example timing is noise; max_examples bounds the run time.

STATS: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module", autouse=True)
def write_stats():
    """With BIOMEDGPT_FUZZ_STATS=path, merge this module's counts into that JSON file at the end."""
    yield
    path = os.environ.get("BIOMEDGPT_FUZZ_STATS")
    if path:
        merged = {}
        if os.path.exists(path):
            with open(path) as handle:
                merged = json.load(handle)
        for key, counter in STATS.items():
            entry = collections.Counter(merged.get(key, {}))
            entry.update(counter)
            merged[key] = dict(entry)
        with open(path, "w") as handle:
            json.dump(merged, handle, indent=1, sort_keys=True)


# ---------------------------------------------------------------------------------------------- images
def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int, payload: bytes = b"") -> bytes:
    """A PNG claiming `width x height` (zero or huge) with a tiny IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(payload))
            + _png_chunk(b"IEND", b""))


def dicom_bytes(rows: int, cols: int, photometric: str = "MONOCHROME2", seed: int = 0) -> bytes:
    """A small valid 16-bit DICOM file (as written by scanners: 128-byte preamble, `DICM`)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("scan", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 4096, (rows, cols), dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


MODES = ("RGB", "L", "LA", "P", "1", "RGBA", "I;16", "I", "F", "CMYK")


def image_of_mode(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        return Image.fromarray((rng.random((height, width)) * 4000).astype(dtype))
    base = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return base.convert(mode)


@st.composite
def real_images(draw) -> bytes:
    """Decodable images of any size 1..48 and many modes / formats (all must give a sample or a DataError)."""
    mode = draw(st.sampled_from(MODES))
    STATS["images drawn"][f"mode {mode}"] += 1
    width, height, seed = draw(st.integers(1, 48)), draw(st.integers(1, 48)), draw(st.integers(0, 9))
    image = image_of_mode(mode, width, height, seed)
    formats = {"RGB": ["PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF"], "L": ["PNG", "JPEG", "TIFF"],
               "CMYK": ["JPEG", "TIFF"], "F": ["TIFF"], "I": ["TIFF"], "I;16": ["PNG", "TIFF"]}
    return _encode(image, draw(st.sampled_from(formats.get(mode, ["PNG"]))))


@st.composite
def special_images(draw) -> bytes:
    kind = draw(st.sampled_from(["zero", "huge", "nan_float", "inf_float", "dicom", "dicom_mono1", "dicom_cut",
                                 "dicom_flip", "dicom_garbage", "not_image", "empty_bytes", "png_cut"]))
    STATS["images drawn"][kind] += 1
    if kind == "zero":
        return png_header_only(*draw(st.sampled_from([(0, 0), (0, 7), (7, 0)])))
    if kind == "huge":
        return png_header_only(draw(st.integers(20_000, 2 ** 31 - 1)), draw(st.integers(20_000, 2 ** 31 - 1)))
    if kind in ("nan_float", "inf_float"):
        array = np.random.default_rng(0).random((6, 5)).astype(np.float32)
        array[draw(st.integers(0, 5)), draw(st.integers(0, 4))] = np.nan if kind == "nan_float" else np.inf
        return _encode(Image.fromarray(array), "TIFF")
    if kind.startswith("dicom"):
        data = dicom_bytes(draw(st.integers(1, 24)), draw(st.integers(1, 24)),
                           "MONOCHROME1" if kind == "dicom_mono1" else "MONOCHROME2")
        if kind == "dicom_cut":
            return data[: draw(st.integers(132, len(data) - 1))]
        if kind == "dicom_flip":
            position = draw(st.integers(132, len(data) - 1))
            return data[:position] + bytes([data[position] ^ (1 << draw(st.integers(0, 7)))]) + data[position + 1:]
        if kind == "dicom_garbage":
            return data[:132] + draw(st.binary(max_size=200))
        return data
    if kind == "not_image":
        return draw(st.binary(max_size=300))
    if kind == "empty_bytes":
        return b""
    data = _encode(image_of_mode("RGB", 16, 16, 0), "PNG")
    return data[: draw(st.integers(0, len(data) - 1))]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@st.composite
def image_fields(draw) -> str:
    """Base64 image fields: real images, special images, and corruptions of a good image's base64."""
    kind = draw(st.sampled_from(["real", "special", "truncate", "bitflip", "charflip", "urlsafe", "nopad",
                                 "padded", "data_uri", "random_text"]))
    STATS["images drawn"][f"base64 {kind}"] += 1
    if kind == "real":
        return b64(draw(real_images()))
    if kind == "special":
        return b64(draw(special_images()))
    good = image_b64(draw(st.sampled_from(list(COLOURS))), size=16, seed=draw(st.integers(0, 3)))
    if kind == "truncate":
        return good[: draw(st.integers(0, len(good) - 1))]
    if kind == "bitflip":
        data = bytearray(base64.b64decode(good))
        position = draw(st.integers(0, len(data) - 1))
        data[position] ^= 1 << draw(st.integers(0, 7))
        return b64(bytes(data))
    if kind == "charflip":
        position = draw(st.integers(0, len(good) - 1))
        return good[:position] + draw(st.sampled_from("A/+=-_ .!\u00e9")) + good[position + 1:]
    if kind == "urlsafe":
        return good.replace("+", "-").replace("/", "_")
    if kind == "nopad":
        return good.rstrip("=")
    if kind == "padded":
        return "  " + good + "  "
    if kind == "data_uri":
        return "data:image/png;base64," + good
    return draw(st.text(max_size=30))


# ---------------------------------------------------------------------------------------------- other values
TEXT = st.one_of(st.just(""), st.just("   "), st.text(max_size=40),
                 st.integers(200, 3000).map(lambda n: "word " * n),
                 st.text(alphabet="abc \t\r\n?.,&|!+<>", max_size=20))
NUMBER_TEXT = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                        st.integers(-10 ** 6, 10 ** 6).map(str),
                        st.sampled_from(["", " ", "1e309", "-0", "0x10", "1,5", "abc", "nan", "-inf"]))
CONFIDENCE = st.one_of(NUMBER_TEXT, st.sampled_from(["1.0", "0.5", "0", "2"]))
ANSWER = st.one_of(st.sampled_from(["red", "green", "blue", "purple", "", " red", "dark red"]), st.text(max_size=8))
WELL_FORMED_ANSWER = st.tuples(CONFIDENCE, ANSWER).map(lambda t: f"{t[0]}|!+{t[1]}")
ANSWERS = st.one_of(WELL_FORMED_ANSWER,
                    st.lists(st.one_of(WELL_FORMED_ANSWER, st.text(max_size=8)), max_size=4).map("&&".join))
BOX = st.one_of(st.lists(st.one_of(NUMBER_TEXT, st.integers(-50, 120).map(str)), max_size=6).map(",".join),
                st.tuples(*[st.integers(-5, 60)] * 4).map(lambda b: ",".join(map(str, b))))
LABELS = {
    "label": st.one_of(st.sampled_from(list(COLOURS) + ["purple", " red ", "RED", ""]), st.text(max_size=8)),
    "nli_label": st.one_of(st.sampled_from(["0", "1", "2", "3", "-1", "neutral", "entailment", "contradiction",
                                            "yes", "no", "maybe", "maybe yes", "Entailment ", ""]),
                           st.text(max_size=8)),
    "ve_label": st.one_of(st.sampled_from(["contradiction", "entailment", "neutral", "yes", "no", "maybe",
                                           "Neutral", "probably", ""]), st.text(max_size=8)),
    "kind": st.one_of(st.sampled_from(["caption", "qa", "visual_grounding", " qa ", "QA", "detection", ""]),
                      st.text(max_size=8)),
    "dataset": st.sampled_from(["synthetic", "cc12m", "", " cc12m "]),
}
OBJECTS = st.lists(st.text(max_size=6), max_size=4).map("&&".join)


def values_for(role: str):
    if role == "image":
        return image_fields()
    if role == "answers":
        return ANSWERS
    if role == "box":
        return BOX
    if role == "refs":
        return st.one_of(ANSWERS, BOX)
    if role == "objects":
        return OBJECTS
    if role in LABELS:
        return LABELS[role]
    return TEXT  # "text", "id"


# ---------------------------------------------------------------------------------------------- mutations
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf",
                b"\xe2\x82"]


@st.composite
def mutate(draw, fields: List[bytes], roles: List[str]):
    """One random mutation of a raw row (a list of byte fields). Returns (fields, label)."""
    kind = draw(st.sampled_from(["value", "value", "value", "drop_columns", "extra_columns", "invalid_utf8",
                                 "tab", "newline", "carriage_return"]))
    fields = list(fields)
    if kind == "value":
        column = draw(st.integers(0, len(fields) - 1)) if fields else 0
        role = roles[column] if column < len(roles) else "text"
        if column < len(fields):
            fields[column] = draw(values_for(role)).encode("utf-8", "surrogatepass")
        return fields, f"value:{role}"
    if kind == "drop_columns":
        return fields[: draw(st.integers(0, max(len(fields) - 1, 0)))], kind
    if kind == "extra_columns":
        return fields + [t.encode() for t in draw(st.lists(st.text(max_size=5), min_size=1, max_size=3))], kind
    if not fields:
        return fields, "noop"
    column = draw(st.integers(0, len(fields) - 1))
    position = draw(st.integers(0, len(fields[column])))
    insert = {"invalid_utf8": draw(st.sampled_from(INVALID_UTF8)), "tab": b"\t",
              "newline": draw(st.sampled_from([b"\n", b"\r\n", b"\n\n"])), "carriage_return": b"\r"}[kind]
    fields[column] = fields[column][:position] + insert + fields[column][position:]
    return fields, kind


@dataclass
class Plan:
    """One written row: the good template it came from and the mutations applied (none: must read fine)."""
    data: bytes
    labels: List[str]

    def __repr__(self):  # rows hold long base64 images: keep failure reports readable
        shown = self.data if len(self.data) <= 160 else self.data[:80] + b"..." + self.data[-60:]
        return f"Plan({shown!r}, {self.labels})"


@st.composite
def row_plans(draw, spec: "Spec", max_rows: int = 10):
    plans = []
    for _ in range(draw(st.integers(1, max_rows))):
        fields = [f.encode() for f in spec.good[draw(st.integers(0, len(spec.good) - 1))]]
        labels = []
        for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
            fields, label = draw(mutate(fields, spec.roles))
            labels.append(label)
        plans.append(Plan(b"\t".join(fields), labels))
    return plans


def write_file(path: str, plans: List[Plan], blanks: List[bytes]) -> List[bytes]:
    """Write the rows (a blank-ish line from `blanks` after some); returns the file's bytes."""
    data = b""
    for i, plan in enumerate(plans):
        data += plan.data + b"\n" + (blanks[i] if i < len(blanks) else b"")
    with open(path, "wb") as handle:
        handle.write(data)
    return data


def physical_rows(data: bytes):
    """(1-based line number, line bytes) of every line IndexedTSV must index: non-empty once CR/LF are removed."""
    return [(number, line) for number, line in enumerate(data.split(b"\n"), 1) if line.strip(b"\r\n")]


# ---------------------------------------------------------------------------------------------- the validity oracle
def _answer_problem(text: str, answer_set=None) -> Optional[str]:
    """Mirror of the documented answer-column rules: `conf|!+answer&&...`, finite non-negative confidences,
    non-empty answers; with `answer_set`, the most confident answer must be in it."""
    answers = {}
    for item in text.split("&&"):
        if not item.strip():
            continue
        conf, sep, answer = item.partition("|!+")
        if not sep:
            return "answer without 'conf|!+'"
        try:
            value = float(conf)
        except ValueError:
            return "confidence not a number"
        if not math.isfinite(value) or value < 0:
            return "confidence not finite and >= 0"
        if not answer.strip():
            return "empty answer"
        answers[answer] = value
    if not answers:
        return "no answer"
    if answer_set is not None and max(answers.items(), key=lambda kv: kv[1])[0] not in answer_set:
        return "answer outside the answer set"
    return None


def _box_problem(text: str) -> Optional[str]:
    try:
        x0, y0, x1, y1 = (float(v) for v in text.strip().split(","))
    except ValueError:
        return "box is not 4 numbers"
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        return "box is negative, inverted or NaN"
    return None


_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")


def _image_problem(text: str) -> Optional[str]:
    stripped = text.strip()
    if not stripped:
        return "empty image"
    if not _BASE64.fullmatch(stripped) or len(stripped.rstrip("=")) % 4 == 1:
        return "not base64"
    return None


def obviously_bad(spec: "Spec", split: str, line: bytes) -> Optional[str]:
    """Why a physical line must give a DataError, by rules written down here (None: no rule says so)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid utf-8"
    fields = text.rstrip("\r\n").split("\t")
    if len(fields) <= max(spec.selected):
        return "too few columns"
    row = {name: fields[column] for name, column in zip(spec.names, spec.selected)}
    for name in spec.required:
        if not row[name].strip():
            return f"empty {name}"
    if "image" in row and _image_problem(row["image"]):
        return _image_problem(row["image"])
    return spec.check(row, split) if spec.check else None


def _check_vqa(row, split):
    return _answer_problem(row["answers"], set(COLOURS) if split == "train" else None)


def _check_classify(row, split):
    return None if row["label_name"].strip() in COLOURS else "class outside the class set"


NLI_WORDS = {"0": "maybe", "1": "yes", "2": "no", "neutral": "maybe", "entailment": "yes", "contradiction": "no"}


def _check_nli(row, split):
    label = row["label"].strip()
    return None if NLI_WORDS.get(label.lower(), label.lower()) in ("maybe", "yes", "no") else "label outside set"


def _check_snli(row, split):
    label = row["label"].strip().lower()
    return None if label in ("contradiction", "entailment", "neutral", "yes", "no", "maybe") else "bad label"


def _check_refcoco(row, split):
    return _box_problem(row["region"])


def _check_unify(row, split):
    kind = row["type"].strip()
    if kind not in ("caption", "qa", "visual_grounding"):
        return "bad type"
    if kind == "caption" and not row["caption"].strip():
        return "empty caption"
    if kind == "qa":
        if not row["question"].strip():
            return "empty question"
        return _answer_problem(row["refs"])
    if kind == "visual_grounding":
        if not row["caption"].strip():
            return "empty caption"
        return _box_problem(row["refs"])
    return None


# ---------------------------------------------------------------------------------------------- tasks
COLOUR_SET = '{"red": 0, "green": 1, "blue": 2}'


@dataclass
class Spec:
    task: str
    flags: List[str]
    good: List[List[str]]  # raw good rows
    roles: List[str]  # role of each raw column (which values a "value" mutation draws)
    selected: List[int]  # --selected-cols
    names: List[str]  # the task's column names (of the selected columns)
    required: List[str] = field(default_factory=list)  # selected columns that must hold non-blank text
    check: Optional[Callable] = None
    splits: tuple = ("train", "valid")


def _specs() -> Dict[str, Spec]:
    return {
        "vqa_gen": Spec("vqa_gen", ["--ans2label-dict", COLOUR_SET, "--prompt-type", "prev_output", "--add-object"],
                        vqa_rows(6), ["id", "id", "text", "answers", "objects", "image"], [0, 5, 2, 3, 4],
                        ["question_id", "image", "question", "answers", "objects"], ["question"], _check_vqa),
        "image_classify": Spec("image_classify", ["--ans2label-dict", COLOUR_SET], classify_rows(6),
                               ["image", "id", "label"], [0, 2], ["image", "label_name"], ["label_name"],
                               _check_classify),
        "caption": Spec("caption", [], caption_rows(6), ["id", "id", "text", "objects", "image"], [0, 4, 2],
                        ["uniq_id", "image", "caption"], ["caption"]),
        "gigaword": Spec("gigaword", [], summary_rows(6), ["text", "text"], [0, 1], ["source", "target"],
                         ["source", "target"]),
        "mnli": Spec("mnli", ["--prompt-type", "src"], nli_rows(6), ["text", "text", "nli_label"], [0, 1, 2],
                     ["sentence1", "sentence2", "label"], ["sentence1", "sentence2", "label"], _check_nli),
        "snli_ve": Spec("snli_ve", ["--prompt-type", "prev_output", "--add-caption"], snli_rows(6),
                        ["id", "image", "text", "text", "ve_label"], [0, 1, 2, 3, 4],
                        ["uniq_id", "image", "hypothesis", "caption", "label"], ["hypothesis"], _check_snli),
        "refcoco": Spec("refcoco", [], refcoco_rows(6), ["id", "image", "text", "box"], [0, 1, 2, 3],
                        ["uniq_id", "image", "text", "region"], ["text"], _check_refcoco),
        "unify_task": Spec("unify_task", ["--patch-image-size", "32", "--max-image-size", "64"],
                           vision_language_rows(6),
                           ["id", "image", "text", "text", "refs", "objects", "dataset", "kind"], list(range(8)),
                           ["uniq_id", "image", "caption", "question", "refs", "gt_objects", "dataset_name", "type"],
                           [], _check_unify, splits=("train",)),
    }


SPECS = _specs()
TASKS = list(SPECS)
_FILES = itertools.count()


def setup_task(name: str, flags: List[str], data: str):
    """The task exactly as `fairseq-train DATA --task NAME FLAGS` sets it up (no model)."""
    import biomedgpt  # noqa: F401
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=[data, f"--task={name}", "--arch=ofa_tiny", *flags])
    return tasks.setup_task(convert_namespace_to_omegaconf(args).task)


def write_unify_extras(folder) -> List[str]:
    """Clean text / image (with 256 codes) / detection TSVs and a --neg-sample-dir; returns the flags."""
    os.makedirs(folder, exist_ok=True)
    paths = {name: os.path.join(folder, f"{name}.tsv") for name in ("text", "image", "detection")}
    names = list(COLOURS)
    rng = np.random.default_rng(0)
    rows = {
        "text": text_rows(6),
        "image": [[f"im{i}", image_b64(names[i % 3], size=32, seed=i),
                   " ".join(map(str, rng.integers(0, 8192, 256)))] for i in range(4)],
        "detection": detection_rows(4),
    }
    for name, path in paths.items():
        with open(path, "w") as handle:
            handle.writelines("\t".join(row) + "\n" for row in rows[name])
    negatives = os.path.join(folder, "negatives")
    os.makedirs(negatives, exist_ok=True)
    with open(os.path.join(negatives, "type2ans.json"), "w") as handle:
        json.dump({"colour": ["red", "green", "blue", "dark red"]}, handle)
    with open(os.path.join(negatives, "object.txt"), "w") as handle:
        handle.write("square\ngrey\ncircle\n")
    with open(os.path.join(negatives, "all_captions.txt"), "w") as handle:
        handle.write("a red square on grey\na green square on grey\na blue circle\n")
    return ["--text-data", paths["text"], "--text-selected-cols", "0,1", "--image-data", paths["image"],
            "--image-selected-cols", "0,1,2", "--detection-data", paths["detection"],
            "--detection-selected-cols", "0,1,2"], negatives, paths


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


class TaskRunner:
    """One set-up task per (name, negatives); each example points it at a new file and reloads the split."""

    def __init__(self, spec: Spec, folder):
        self.spec, self.folder = spec, folder
        self.extra_flags, self.extra_paths, self.negatives_dir = [], {}, None
        if spec.task == "unify_task":
            self.extra_flags, self.negatives_dir, self.extra_paths = write_unify_extras(os.path.join(folder, "extras"))
        placeholder = os.path.join(folder, "placeholder.tsv")
        open(placeholder, "w").close()
        flags = ["--selected-cols", ",".join(map(str, spec.selected)), "--patch-image-size", "32", *spec.flags,
                 *self.extra_flags]
        self.task = setup_task(spec.task, flags + (["--neg-sample-dir", self.negatives_dir]
                                                   if self.negatives_dir else []), placeholder)
        self.derived = setup_task(spec.task, flags, placeholder) if self.negatives_dir else None
        self.names = list(self.task.column_names)

    def dataset(self, path: str, split: str, skip: bool, derived: bool = False):
        task = self.derived if derived else self.task
        task.cfg.data = f"{path},{path}"
        task.cfg.skip_invalid_rows = skip
        if hasattr(task, "negatives"):
            task.negatives = None  # derived from this file's rows
        task.load_dataset(split)
        return task.datasets[split]


@pytest.fixture(scope="module")
def runners(folder):
    cache = {}

    def get(name: str) -> TaskRunner:
        if name not in cache:
            cache[name] = TaskRunner(SPECS[name], str(folder / name))
        return cache[name]

    for name in TASKS:
        os.makedirs(folder / name, exist_ok=True)
    return get


def read(dataset, index: int):
    """`dataset[index]` with the global RNGs reset (image_classify's training augmentation draws from them)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return dataset[index]


def assert_same(a, b, where: str) -> None:
    """Bit-identical values: tensors (dtype and every bit), arrays, nested dicts / lists, plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.view(torch.uint8) if a.is_floating_point() else a,
                           b.view(torch.uint8) if b.is_floating_point() else b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.shape == b.shape and list(a.ravel()) == list(b.ravel()), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, a.keys(), b.keys())
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), (where, a, b)


def without_ids(sample):
    """A sample with its row indices removed (they differ between the mixed and the clean file)."""
    if isinstance(sample, dict):
        return {k: v for k, v in sample.items() if k != "id"}
    return sample


def check_error(error: DataError, path: str, line: int, names: List[str]) -> None:
    message = str(error)
    assert error.path == path and message.startswith(path), message
    assert error.line == line and re.search(rf"\bline {line}\b", message), (line, message)
    if error.column is not None:
        assert error.column in names or error.column.isdigit(), (error.column, names)
        assert repr(error.column) in message, message


BLANKS = st.lists(st.sampled_from([b"", b"", b"", b"\n", b"\r\n", b"\r\n\n"]), max_size=10)


# ---------------------------------------------------------------------------------------------- IndexedTSV
LINE_BYTES = st.lists(st.one_of(st.sampled_from([b"\t", b"\n", b"\r", b"\r\n", b"a", b" ", b"\xff", b"\xc3\xa9",
                                                 b"\xed\xa0\x80", b"\x00", b"text"]),
                                st.binary(max_size=4)), max_size=40).map(b"".join)


@FUZZ
@given(data=LINE_BYTES, selected=st.one_of(st.none(), st.lists(st.integers(0, 4), min_size=1, max_size=4)),
       cache=st.booleans())
def test_indexed_tsv_reads_any_bytes_or_names_the_line(folder, data, selected, cache):
    path = str(folder / f"raw{next(_FILES)}.tsv")
    with open(path, "wb") as handle:
        handle.write(data)
    names = [f"c{i}" for i in range(len(selected))] if selected else None
    tsv = IndexedTSV(path, selected, column_names=names, cache_index=cache)
    rows = physical_rows(data)
    assert len(tsv) == len(rows)
    stats = STATS["indexed_tsv"]
    stats["files"] += 1
    for index, (number, line) in enumerate(rows):
        stats["rows"] += 1
        try:
            fields = tsv[index]
        except DataError as error:
            stats["data_errors"] += 1
            check_error(error, path, number, names or [])
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                continue
            assert selected and len(text.rstrip("\r\n").split("\t")) <= max(selected), (line, error)
            continue
        expected = line.decode("utf-8").rstrip("\r\n").split("\t")
        assert fields == (expected if selected is None else [expected[c] for c in selected])
    if cache:  # a second reader uses the cached index and agrees
        assert list(IndexedTSV(path, selected, column_names=names).offsets) == list(tsv.offsets)


# ---------------------------------------------------------------------------------------------- every dataset
def run_example(runner: TaskRunner, split: str, plans: List[Plan], blanks: List[bytes]) -> None:
    spec = runner.spec
    path = os.path.join(runner.folder, f"mixed{next(_FILES)}.tsv")
    data = write_file(path, plans, blanks)
    rows = physical_rows(data)
    untouched = {plan.data for plan in plans if not plan.labels}
    stats = STATS[spec.task]
    stats["files"] += 1
    stats["rows"] += len(rows)
    for plan in plans:
        for label in plan.labels:
            stats[f"mutation {label.split(':')[0]}"] += 1

    # (1) without skipping: a sample or a DataError naming file + line (+ column); the oracle's bad rows fail
    plain = runner.dataset(path, split, skip=False)
    assert len(plain) == len(rows)
    failed = set()
    samples = {}
    for index, (number, line) in enumerate(rows):
        reason = obviously_bad(spec, split, line)
        try:
            samples[index] = read(plain, index)
        except DataError as error:
            failed.add(index)
            check_error(error, path, number, runner.names)
            stats["data_errors"] += 1
            note(f"row {index} (line {number}): {error}")
            continue
        assert reason is None, f"line {number} should fail ({reason}) but gave a sample: {line[:200]!r}"
        assert samples[index] is not None
    for index, (number, line) in enumerate(rows):
        if line in untouched:
            assert index not in failed, f"an untouched good row failed (line {number})"
        if obviously_bad(spec, split, line):
            stats["rows the oracle calls bad"] += 1
    stats["good rows"] += len(rows) - len(failed)

    # (2) with --skip-invalid-rows: None exactly for the failing rows, counted exactly
    skipping = runner.dataset(path, split, skip=True)
    kept = [read(skipping, index) for index in range(len(rows))]
    assert {i for i, sample in enumerate(kept) if sample is None} == failed
    assert skipping.skipped_rows == len(failed)
    kept += [read(skipping, index) for index in sorted(failed)]  # re-reading a skipped row does not count again
    assert skipping.skipped_rows == len(failed)
    for index in samples:
        assert_same(kept[index], samples[index], f"row {index}: skip vs no skip")

    # (3) the kept samples are bit-identical to a clean file of only the good rows
    clean_path = os.path.join(runner.folder, f"clean{next(_FILES)}.tsv")
    if spec.task == "unify_task":  # samples depend on the row index: keep the indices, replace the bad rows
        filler = "\t".join(spec.good[0]).encode()
        clean_lines = [filler if index in failed else line for index, (_, line) in enumerate(rows)]
    else:
        clean_lines = [line for index, (_, line) in enumerate(rows) if index not in failed]
    with open(clean_path, "wb") as handle:
        handle.write(b"".join(line + b"\n" for line in clean_lines))
    clean = runner.dataset(clean_path, split, skip=False)
    reference = [read(clean, index) for index in range(len(clean_lines))]
    good = [index for index in range(len(rows)) if index not in failed]
    if spec.task == "unify_task":
        for index in good:
            assert_same(kept[index], reference[index], f"row {index}: mixed vs clean")
    else:
        for position, index in enumerate(good):
            assert_same(without_ids(kept[index]), without_ids(reference[position]), f"row {index}: mixed vs clean")
        batch = skipping.collater(kept[: len(rows)])
        expected = clean.collater(reference)
        assert batch.get("nsentences", 0) == len(good)
        if good:
            assert list(batch["id"]) == good
            assert_same({k: v for k, v in batch.items() if k != "id"},
                        {k: v for k, v in expected.items() if k != "id"}, "batch")
        else:
            assert batch == {}

    # (4) unify_task with negatives derived from the same rows: loads with --skip-invalid-rows, same rows fail
    if runner.derived is not None:
        derived = runner.dataset(path, split, skip=True, derived=True)
        assert {i for i in range(len(rows)) if read(derived, i) is None} == failed
        assert derived.skipped_rows == len(failed)


@pytest.mark.parametrize("task", TASKS)
def test_dataset_rows_give_a_sample_or_a_data_error(runners, task):
    runner = runners(task)
    spec = runner.spec

    @FUZZ
    @given(split=st.sampled_from(spec.splits), plans=row_plans(spec), blanks=BLANKS)
    def example(split, plans, blanks):
        run_example(runner, split, plans, blanks)

    example()


# ---------------------------------------------------------------------------------------------- unify extras
EXTRA_ROLES = {"text": ["id", "text"], "image": ["id", "image", "codes"], "detection": ["id", "image", "detections"]}
CODES = st.one_of(
    st.lists(st.integers(-3, 8200), min_size=250, max_size=260).map(lambda c: " ".join(map(str, c))),
    st.lists(st.integers(0, 8191), min_size=256, max_size=256).map(lambda c: " ".join(map(str, c))),
    st.text(max_size=20), st.just(" ".join(["1.5"] * 256)), st.just(""))
DETECTIONS = st.lists(st.one_of(
    st.tuples(BOX, st.text(max_size=4), st.text(max_size=6)).map(lambda t: f"{t[0]},{t[1]},{t[2]}"),
    st.text(max_size=10)), min_size=1, max_size=3).map("&&".join)


@st.composite
def extra_file(draw, name: str, good: List[List[str]]):
    roles = EXTRA_ROLES[name]
    plans = []
    for _ in range(draw(st.integers(1, 3))):
        fields = [f.encode() for f in good[draw(st.integers(0, len(good) - 1))]]
        labels = []
        for _ in range(draw(st.sampled_from([0, 1, 1, 2]))):
            if draw(st.booleans()):
                column = draw(st.integers(0, len(roles) - 1))
                if column < len(fields):
                    role = roles[column]
                    value = draw(CODES if role == "codes" else DETECTIONS if role == "detections" else
                                 values_for(role))
                    fields[column] = value.encode("utf-8", "surrogatepass")
                    labels.append(f"value:{role}")
            else:
                fields, label = draw(mutate(fields, roles))
                labels.append(label)
        plans.append(Plan(b"\t".join(fields), labels))
    return plans


@FUZZ
@given(st.data())
def test_unify_extra_files_give_a_sample_or_a_data_error(runners, data):
    """text / image (codes) / detection TSVs fuzzed; the 8th rows read them: a sample, or a DataError naming the
    extra file and one of its lines; with --skip-invalid-rows that main row is skipped and counted."""
    runner = runners("unify_task")
    stats = STATS["unify_task extras"]
    folder = os.path.join(runner.folder, f"extras{next(_FILES)}")
    os.makedirs(folder)
    files, lines = {}, {}
    with open(runner.extra_paths["text"]) as handle:
        good = {"text": [line.rstrip("\n").split("\t") for line in handle]}
    for name in ("image", "detection"):
        with open(runner.extra_paths[name]) as handle:
            good[name] = [line.rstrip("\n").split("\t") for line in handle]
    for name in ("text", "image", "detection"):
        plans = data.draw(extra_file(name, good[name]), label=name)
        files[name] = os.path.join(folder, f"{name}.tsv")
        written = write_file(files[name], plans, [])
        lines[name] = {number for number, _ in physical_rows(written)}
        stats["extra rows"] += len(lines[name])
    if not all(lines.values()):
        return  # a file of only newlines: the task refuses nothing, but no extra row can be drawn
    main = os.path.join(folder, "main.tsv")
    with open(main, "w") as handle:
        handle.writelines("\t".join(row) + "\n" for row in vision_language_rows(9))
    task = runner.task
    saved = (task.cfg.text_data, task.cfg.image_data, task.cfg.detection_data)
    task.cfg.text_data, task.cfg.image_data, task.cfg.detection_data = files["text"], files["image"], files["detection"]
    try:
        failed = set()
        plain = runner.dataset(main, "train", skip=False)
        for index in (0, 8):
            stats["main rows with extras"] += 1
            try:
                read(plain, index)
            except DataError as error:
                failed.add(index)
                stats["data_errors"] += 1
                source = next(name for name, path in files.items() if error.path == path)
                assert error.line in lines[source], (error.line, lines[source])
                assert re.search(rf"\bline {error.line}\b", str(error)), str(error)
        skipping = runner.dataset(main, "train", skip=True)
        assert {i for i in (0, 8) if read(skipping, i) is None} == failed
        assert skipping.skipped_rows == len(failed)
    finally:
        task.cfg.text_data, task.cfg.image_data, task.cfg.detection_data = saved


# ---------------------------------------------------------------------------------------------- images alone
@FUZZ
@given(st.one_of(real_images(), special_images()))
def test_decode_image_gives_rgb_or_a_data_error(image_bytes):
    from biomedgpt.data.image import decode_image

    stats = STATS["decode_image"]
    stats["images"] += 1
    try:
        image = decode_image(b64(image_bytes), "images.tsv", 3, "image")
    except DataError as error:
        stats["data_errors"] += 1
        assert (error.path, error.line, error.column) == ("images.tsv", 3, "image")
        assert str(error).startswith("images.tsv, line 3, column 'image': ")
        return
    assert image.mode == "RGB" and min(image.size) >= 1
    array = np.asarray(image)
    assert array.dtype == np.uint8 and array.shape == (image.size[1], image.size[0], 3)


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_float_image_with_non_finite_pixels_is_a_data_error(kind):
    """Found by this fuzzing: a float TIFF with one NaN / inf pixel decoded to an all-black image (silently)."""
    from biomedgpt.data.image import decode_image

    array = np.random.default_rng(0).random((6, 5)).astype(np.float32)
    array[2, 3] = np.nan if kind == "nan" else np.inf
    with pytest.raises(DataError, match="not finite"):
        decode_image(b64(_encode(Image.fromarray(array), "TIFF")), "x.tsv", 4, "image")


@pytest.mark.parametrize("answers, problem", [("nan|!+red", "finite"), ("inf|!+red", "finite"),
                                              ("-1|!+red", "finite"), ("1.0|!+", "empty answer"),
                                              ("1.0|!+ ", "empty answer")])
def test_answer_confidences_must_be_finite_and_answers_non_empty(answers, problem):
    """Found by this fuzzing: `nan|!+red` gave a NaN confidence, which multiplies the loss (NaN training)."""
    from biomedgpt.data.answers import parse_answer_confidences

    with pytest.raises(ValueError, match=problem):
        parse_answer_confidences(answers)
