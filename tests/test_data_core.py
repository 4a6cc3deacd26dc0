"""TSV index/random access, image decoding (base64 variants, grayscale, 16-bit, DICOM) and clear data errors."""
import base64
import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from biomedgpt.data.answers import load_ans2label, parse_answer_confidences
from biomedgpt.data.errors import DataError
from biomedgpt.data.image import decode_image
from biomedgpt.data.text import pre_caption, pre_question
from biomedgpt.data.tsv import IndexedTSV, parse_selected_cols


def png_b64(mode="RGB", size=(8, 6), urlsafe=False, fmt="PNG"):
    array = np.random.default_rng(0).integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(array)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(buffer.getvalue()).decode()


def write(path, rows):
    path.write_text("".join("\t".join(row) + "\n" for row in rows))
    return str(path)


def test_random_access_and_selected_cols(tmp_path):
    path = write(tmp_path / "d.tsv", [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]])
    tsv = IndexedTSV(path, selected_cols=[2, 0])
    assert len(tsv) == 3
    assert tsv[2] == ["i", "g"] and tsv[0] == ["c", "a"] and tsv[1] == ["f", "d"]
    assert os.path.exists(path + ".index.npy")


def test_index_cache_is_invalidated_when_the_file_changes(tmp_path):
    path = write(tmp_path / "d.tsv", [["a"], ["b"]])
    assert len(IndexedTSV(path)) == 2
    write(tmp_path / "d.tsv", [["a"], ["b"], ["c"]])
    os.utime(path, ns=(1, 10 ** 18))
    assert len(IndexedTSV(path)) == 3
    assert IndexedTSV(path)[2] == ["c"]


def test_reader_survives_pickling_for_workers(tmp_path):
    path = write(tmp_path / "d.tsv", [["x", "1"], ["y", "2"]])
    tsv = IndexedTSV(path)
    tsv[0]
    clone = pickle.loads(pickle.dumps(tsv))
    assert clone[1] == ["y", "2"]


def test_missing_column_names_file_line_and_count(tmp_path):
    path = write(tmp_path / "bad.tsv", [["a", "b", "c"], ["only-one"]])
    tsv = IndexedTSV(path, selected_cols=[0, 2])
    with pytest.raises(DataError, match=r"bad\.tsv, line 2, column '2': missing: the row has 1 columns, but "
                                        r"--selected-cols 0,2 needs"):
        tsv[1]


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "u.tsv"
    path.write_bytes(b"ok\tfine\n\xff\xfe\tbroken\n")
    with pytest.raises(DataError, match="line 2: not valid UTF-8"):
        IndexedTSV(str(path))[1]


@pytest.mark.parametrize("kwargs", [{}, {"urlsafe": True}, {"mode": "L"}, {"fmt": "JPEG"}, {"mode": "RGBA"}])
def test_decode_image_variants(kwargs):
    image = decode_image(png_b64(**kwargs))
    assert image.mode == "RGB" and image.size == (8, 6)


def test_decode_16bit_grayscale_scales_to_8bit():
    array = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    image = decode_image(base64.b64encode(buffer.getvalue()).decode())
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.max() == 255 and pixels.min() == 0


def test_decode_dicom():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = generate_uid()
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    pixels = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 50)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    image = decode_image(base64.b64encode(buffer.getvalue()).decode())
    assert image.mode == "RGB" and image.size == (8, 8)
    assert np.asarray(image)[0, 0, 0] == 0 and np.asarray(image)[-1, -1, 0] == 255


@pytest.mark.parametrize("text, problem", [
    ("not base64 !!", "not valid base64"),
    (base64.b64encode(b"definitely not an image").decode(), "not a readable image"),
    ("", "empty image field"),
])
def test_bad_images_raise_data_error(text, problem):
    with pytest.raises(DataError, match=problem) as info:
        decode_image(text, "f.tsv", 7, "image")
    assert "f.tsv, line 7, column 'image'" in str(info.value)


def test_truncated_image_is_a_data_error():
    data = base64.b64decode(png_b64(size=(64, 64)))
    with pytest.raises(DataError, match="not a readable image"):
        decode_image(base64.b64encode(data[: len(data) // 2]).decode())


def test_text_normalisation():
    assert pre_caption(",A Chest-X/ray   of <person>  today.", 4) == "a chest x ray"
    assert pre_caption("<person> walks  ", 5) == "person walks"
    assert pre_question("Is there   a fracture?", 10) == "is there a fracture?"


def test_answers_and_selected_cols(tmp_path):
    assert parse_answer_confidences("1.0|!+yes&&0.3|!+no") == {"yes": 1.0, "no": 0.3}
    with pytest.raises(ValueError, match="confidence"):
        parse_answer_confidences("yes")
    assert parse_selected_cols("0,5,2") == [0, 5, 2] and parse_selected_cols(None) is None
    path = tmp_path / "a.pkl"
    path.write_bytes(pickle.dumps({"yes": 0, "no": 1}))
    assert load_ans2label(None, str(path)) == {"yes": 0, "no": 1}
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(os.getcwd))  # a global reference: refused, never resolved
    with pytest.raises(ValueError, match="refusing"):
        load_ans2label(None, str(evil))


def test_classification_augmentation_survives_the_largest_magnitude():
    """RandAugment's magnitude noise can reach 10, where timm's increasing posterize keeps 0 bits (Pillow raises)."""
    from timm.data.auto_augment import RandAugment

    from biomedgpt.data.datasets.classify import train_transform

    transform = train_transform(32, imagenet=False)
    augment = next(step for step in transform.transforms if isinstance(step, RandAugment))
    posterize = next(op for op in augment.ops if op.name == "PosterizeIncreasing")
    posterize.prob, posterize.magnitude, posterize.magnitude_std = 1.0, 12.0, 0.0
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert posterize(image).size == (32, 32)


def test_bpe_decode_keeps_location_and_code_symbols():
    """fairseq-generate decodes hypotheses with the task's BPE; boxes (<bin_k>) and codes must not crash it."""
    from biomedgpt.data.bpe import build_bpe

    bpe = build_bpe()
    words = bpe.encode(" the left lung")
    assert bpe.decode(words).strip() == "the left lung"
    assert bpe.decode(f"<bin_3> <bin_999> {words} <code_7>") == "<bin_3> <bin_999> the left lung <code_7>"
