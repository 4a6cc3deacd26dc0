"""Preprocessing building blocks: background crop (Otsu), resize and MIM centre crop, image files of every
kind through the training decoder, the safe atomic TSV writer, the generic folder converters, the
`biomedgpt-prepare` command line, and converted data loading in the real task datasets."""
import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from biomedgpt.cli import prepare
from biomedgpt.data.errors import DataError
from biomedgpt.data.image import decode_image
from biomedgpt.data.tsv import IndexedTSV
from biomedgpt.preprocess import Item, Options, folder
from biomedgpt.preprocess.images import (ImageOptions, center_crop, encode_image_file, foreground_box,
                                         otsu_threshold, remove_background)
from biomedgpt.preprocess.tsv_writer import TSVWriter, write_json_atomic


def save(array, path, mode=None):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return str(path)


def bordered_square(height=60, width=80, box=(25, 12, 61, 40), noise=True):
    """Dark noisy background with a bright noisy rectangle at `box` = (left, upper, right, lower)."""
    rng = np.random.default_rng(1)
    array = rng.integers(0, 30, (height, width), dtype=np.uint8) if noise else np.zeros((height, width), np.uint8)
    left, upper, right, lower = box
    array[upper:lower, left:right] = rng.integers(180, 256, (lower - upper, right - left), dtype=np.uint8)
    return array


# ---------------------------------------------------------------------------------------------- images
def test_otsu_threshold_is_opencvs():
    two_levels = np.array([50] * 10 + [200] * 10, np.uint8)
    assert otsu_threshold(two_levels) == 50  # the first threshold of the maximal between-class variance
    assert otsu_threshold(np.full((4, 4), 77, np.uint8)) == 0  # flat image


def test_background_crop_finds_the_square():
    box = (25, 12, 61, 40)
    image = Image.fromarray(bordered_square(box=box)).convert("RGB")
    assert foreground_box(image) == box
    cropped = remove_background(image)
    assert cropped.size == (36, 28)
    assert np.asarray(cropped.convert("L")).min() >= 180
    black = Image.new("RGB", (9, 7))
    assert remove_background(black).size == (9, 7)  # no foreground: unchanged


def test_center_crop_of_256_is_the_middle_128():
    array = (np.arange(256 * 256, dtype=np.uint32).reshape(256, 256) % 251).astype(np.uint8)
    crop = center_crop(Image.fromarray(array), 0.5)
    assert crop.size == (128, 128)
    assert np.array_equal(np.asarray(crop), array[64:192, 64:192])


def test_16_bit_and_grayscale_files(tmp_path):
    box = (10, 20, 50, 44)
    square = bordered_square(box=box).astype(np.uint16) * 250  # 16-bit range
    path16 = str(tmp_path / "sixteen.png")
    Image.fromarray(square.astype(np.uint16)).save(path16)
    assert Image.open(path16).mode.startswith("I")
    options = ImageOptions(crop_background=True, size=256)
    image = decode_image(encode_image_file(path16, options))
    assert image.size == (256, 256) and np.asarray(image.convert("L")).min() > 100  # only the square is left
    plain = decode_image(encode_image_file(path16))  # no transform: an 8-bit PNG, not the 16-bit bytes
    assert plain.size == (80, 60)
    gray = save(bordered_square(box=box), tmp_path / "gray.png")
    kept = encode_image_file(gray)
    assert base64.b64decode(kept) == open(gray, "rb").read()  # 8-bit PNG: passed through unchanged
    mid = decode_image(encode_image_file(gray, ImageOptions(crop_background=True, size=256, center_fraction=0.5)))
    assert mid.size == (128, 128)


def test_dicom_file(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = str(tmp_path / "scan")  # no extension, as DICOM files often are
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    pixels = (bordered_square(box=(5, 5, 30, 20)).astype(np.uint16) * 16)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
    except TypeError:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)  # pydicom 2
    assert pydicom.dcmread(path).Rows == 60
    assert folder.is_image_file(path)
    image = decode_image(encode_image_file(path, ImageOptions(crop_background=True)))
    assert image.size == (25, 15)


def test_unreadable_image_names_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 5)
    with pytest.raises(DataError) as info:
        Item("list.json", None, "item 4").image(str(path))
    assert info.value.path == "list.json" and "item 4" in str(info.value) and "broken.png" in str(info.value)
    assert info.value.column == "image"


# ---------------------------------------------------------------------------------------------- TSV writer
def test_writer_replaces_tabs_and_newlines(tmp_path):
    path = str(tmp_path / "out.tsv")
    with TSVWriter(path, ["id", "text", "label"]) as writer:
        writer.write(["1", "a\tb\r\nc", "x"])
        writer.write([2, "plain", "y"])
    assert writer.cleaned == 1 and writer.rows == 2
    tsv = IndexedTSV(path, cache_index=False)
    assert len(tsv) == 2 and tsv[0] == ["1", "a b c", "x"] and tsv[1] == ["2", "plain", "y"]
    assert all(len(tsv[i]) == 3 for i in range(2))


def test_writer_strict_names_source_and_field(tmp_path):
    path = str(tmp_path / "out.tsv")
    with pytest.raises(DataError) as info:
        with TSVWriter(path, ["id", "question"], strict=True) as writer:
            writer.write(["1", "fine"])
            writer.write(["2", "two\nlines"], item=Item("raw.json", None, "item 1 (qid 2)"))
    assert info.value.path == "raw.json" and info.value.column == "question"
    assert "item 1 (qid 2)" in str(info.value) and "\\n" in str(info.value)
    assert not os.path.exists(path) and not os.path.exists(path + ".tmp")
    with pytest.raises(DataError) as info:  # without an item: the output file and row
        with TSVWriter(path, ["id", "question"], strict=True) as writer:
            writer.write(["1", "tab\there"])
    assert info.value.path == path and info.value.line == 1 and info.value.column == "question"


def test_interrupted_write_leaves_no_file(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("old\tcomplete\n")
    with pytest.raises(RuntimeError):
        with TSVWriter(str(path), ["a", "b"]) as writer:
            writer.write(["1", "2"])
            assert os.path.exists(str(path) + ".tmp")
            raise RuntimeError("crash in the middle")
    assert path.read_text() == "old\tcomplete\n"  # the earlier complete file is untouched
    assert not os.path.exists(str(path) + ".tmp")
    with pytest.raises(ValueError, match="needs 2 fields"):
        with TSVWriter(str(tmp_path / "new.tsv"), ["a", "b"]) as writer:
            writer.write(["only one"])
    assert not (tmp_path / "new.tsv").exists()


def test_json_atomic(tmp_path):
    write_json_atomic(str(tmp_path / "a.json"), {"ß": 1})
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == {"ß": 1}
    assert not (tmp_path / "a.json.tmp").exists()


# ---------------------------------------------------------------------------------------------- folders
def colour_image(path, colour, size=(10, 8)):
    return save(np.full((size[1], size[0], 3), colour, np.uint8), path)


def test_folder_classify_with_split_folders(tmp_path):
    root = tmp_path / "images"
    for split, count in (("train", 2), ("valid", 1)):
        for label, colour in (("normal", (0, 0, 0)), ("tumor", (255, 0, 0))):
            for i in range(count):
                colour_image(root / split / label / f"{i}.png", colour)
    (root / "train" / "tumor" / "notes.txt").write_text("not an image")
    report = folder.convert_classify(str(root), str(tmp_path / "out"))
    assert [(s.name, s.written) for s in report.splits] == [("train", 4), ("val", 2)]
    train = IndexedTSV(str(tmp_path / "out" / "train.tsv"), cache_index=False)
    assert [train[i][1:] for i in range(4)] == [["0", "normal"]] * 2 + [["1", "tumor"]] * 2
    assert decode_image(train[3][0]).getpixel((0, 0)) == (255, 0, 0)
    assert json.loads((tmp_path / "out" / "class2label.json").read_text()) == {"normal": 0, "tumor": 1}


def test_folder_caption_csv(tmp_path):
    colour_image(tmp_path / "img" / "a.png", (1, 2, 3))
    colour_image(tmp_path / "img" / "b.png", (4, 5, 6))
    csv_path = tmp_path / "list.csv"
    csv_path.write_text('path,caption,split\nimg/a.png,"a red, round lesion",train\nimg/b.png,a scan,test\n'
                        'img/missing.png,ghost,train\n')
    with pytest.raises(DataError, match=r"missing\.png.*not found"):
        folder.convert_caption(str(csv_path), str(tmp_path / "out"))
    report = folder.convert_caption(str(csv_path), str(tmp_path / "out"), Options(skip_invalid=True),
                                    id_prefix="9_")
    assert (report.split("train").written, report.split("train").skipped) == (1, 1)
    assert IndexedTSV(str(tmp_path / "out" / "train.tsv"), cache_index=False)[0][:4] == \
        ["9_1", "a", "a red, round lesion", ""]


def test_pretrain_images(tmp_path):
    root = tmp_path / "cxr"
    save(bordered_square(), root / "p1" / "view1.png")
    save(bordered_square(box=(5, 5, 40, 50)), root / "p2" / "view1.jpg")
    report = folder.convert_pretrain_images(str(root), str(tmp_path / "out"), mid=True, id_prefix="1_")
    assert [(s.name, s.written) for s in report.splits] == [("images", 2), ("images_mid", 2)]
    full = IndexedTSV(str(tmp_path / "out" / "images.tsv"), cache_index=False)
    mid = IndexedTSV(str(tmp_path / "out" / "images_mid.tsv"), cache_index=False)
    assert [full[i][0] for i in range(2)] == ["1_1", "1_2"] == [mid[i][0] for i in range(2)]
    big, small = decode_image(full[0][1]), decode_image(mid[0][1])
    assert big.size == (256, 256) and small.size == (128, 128)
    assert np.array_equal(np.asarray(small), np.asarray(big)[64:192, 64:192])
    assert np.asarray(big.convert("L")).min() >= 150  # the dark border is gone


# ---------------------------------------------------------------------------------------------- CLI
def write_vqa_rad(root, missing_image=False):
    os.makedirs(root / "VQA_RAD Image Folder", exist_ok=True)
    colour_image(root / "VQA_RAD Image Folder" / "synpic1.jpg", (200, 10, 10), (32, 32))
    if not missing_image:
        colour_image(root / "VQA_RAD Image Folder" / "synpic2.jpg", (10, 200, 10), (32, 32))
    records = [{"qid": 1, "image_name": "synpic1.jpg", "question": "What Colour?", "answer": "Red",
                "image_organ": "CHEST", "phrase_type": "freeform"},
               {"qid": 2, "image_name": "synpic2.jpg", "question": "what colour?", "answer": "green",
                "image_organ": "CHEST", "phrase_type": "freeform"},
               {"qid": 3, "image_name": "synpic1.jpg", "question": "is it red?", "answer": "yes",
                "image_organ": "CHEST", "phrase_type": "test_freeform"}]
    with open(root / "VQA_RAD Dataset Public.json", "w") as handle:
        json.dump(records, handle)


def test_cli_error_is_one_line_and_skip_invalid_counts(tmp_path, capsys):
    root = tmp_path / "raw"
    write_vqa_rad(root, missing_image=True)
    code = prepare.main(["vqa-rad", "--root", str(root), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "VQA_RAD Dataset Public.json" in err and "qid 2" in err and "synpic2.jpg" in err
    assert not (tmp_path / "out" / "train.tsv").exists()
    code = prepare.main(["vqa-rad", "--root", str(root), "--out", str(tmp_path / "out"), "--skip-invalid"])
    out = capsys.readouterr().out
    assert code == 0
    assert "vqa-rad train: 1 rows written, 1 skipped" in out and "vqa-rad test: 1 rows written, 0 skipped" in out
    code = prepare.main(["slake", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")])
    assert code == 1 and "train.json not found" in capsys.readouterr().err


def test_cli_as_module(tmp_path):
    root = tmp_path / "raw"
    write_vqa_rad(root)
    result = subprocess.run([sys.executable, "-m", "biomedgpt.cli.prepare", "vqa-rad", "--root", str(root),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "vqa-rad: 3 rows written, 0 skipped, 2 TSV files" in result.stdout
    assert "vqa-rad train: done, 2 rows" in result.stderr  # progress output


# ---------------------------------------------------------------------------------------------- end to end
def setup_task(argv):
    """The task exactly as `fairseq-train` sets it up (no model needed to read data)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), input_args=list(argv))
    return tasks.setup_task(convert_namespace_to_omegaconf(args).task)


def test_converted_vqa_rad_loads_in_vqa_gen(tmp_path):
    root, out = tmp_path / "raw", tmp_path / "vqa-rad"
    write_vqa_rad(root)
    assert prepare.main(["vqa-rad", "--root", str(root), "--out", str(out), "--quiet"]) == 0
    task = setup_task([f"{out}/train.tsv,{out}/test.tsv", "--task", "vqa_gen", "--arch", "ofa_tiny",
                       "--selected-cols", "0,5,2,3,4", "--ans2label-file", str(out / "trainval_ans2label.json"),
                       "--prompt-type", "prev_output", "--add-object", "--patch-image-size", "32"])
    task.load_dataset("train")
    dataset = task.dataset("train")
    assert len(dataset) == 2
    item = dataset[0]
    assert item["ref_dict"] == {"red": 1.0} and item["patch_image"].shape == (3, 32, 32)
    assert task.text.decode(item["source"]) == "what colour? object: chest"
    assert task.answers == ["red", "green", "yes"]
    batch = dataset.collater([dataset[0], dataset[1]])
    assert batch["net_input"]["patch_images"].shape == (2, 3, 32, 32) and batch["constraint_masks"] is not None


def test_converted_medmnist_loads_in_image_classify(tmp_path):
    from biomedgpt.preprocess.converters import medmnist

    arrays = {f"{s}_images": np.zeros((2, 28, 28), np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": np.array([[0], [1]], np.uint8) for s in ("train", "val", "test")})
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    medmnist.convert(str(tmp_path), str(tmp_path / "out"))
    out = tmp_path / "out"
    task = setup_task([f"{out}/breastmnist_train.tsv,{out}/breastmnist_val.tsv", "--task", "image_classify",
                       "--arch", "ofa_tiny", "--selected-cols", "0,2", "--patch-image-size", "32",
                       "--ans2label-file", str(out / "breastmnist_class2label.json")])
    task.load_dataset("valid")
    item = task.dataset("valid")[1]
    assert item["ref_dict"] == {"normal, benign": 1.0} and item["patch_image"].shape == (3, 32, 32)
