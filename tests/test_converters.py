"""Every dataset converter of `biomedgpt-prepare` on a tiny synthetic sample written in that dataset's real raw
layout: rows per split, the exact fields of one row (with the reference's text normalisation), images that
decode to the expected size, the answer / class files, and bad raw input (missing image, corrupt JSON, missing
field) as a `DataError` naming the file and the item, or skipped and counted with `skip_invalid`."""
import json
import os
import pickle
import zipfile
from xml.sax.saxutils import escape

import numpy as np
import pytest
from PIL import Image

from biomedgpt.data.answers import load_ans2label
from biomedgpt.data.errors import DataError
from biomedgpt.data.image import decode_image
from biomedgpt.data.tsv import IndexedTSV
from biomedgpt.preprocess import Options
from biomedgpt.preprocess.converters import (iu_xray, medmnist, meqsum, mednli, pathvqa, peir_gross, roco, slake,
                                             vqa_rad)


# ---------------------------------------------------------------------------------------------- helpers
def write_image(path, size=(12, 10), value=120, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    array = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    array[: size[1] // 2] = 255 - value
    Image.fromarray(array).save(path, format=fmt)
    return path


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False)


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


def rows(path):
    """Rows as the training code reads them (IndexedTSV), also checking the file is complete."""
    assert not os.path.exists(str(path) + ".tmp")
    tsv = IndexedTSV(str(path), cache_index=False)
    return [tsv[i] for i in range(len(tsv))]


def image_size(b64):
    return decode_image(b64).size


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# ---------------------------------------------------------------------------------------------- VQA-RAD
def vqa_rad_record(qid, image, question, answer, phrase="freeform", organ="CHEST"):
    return {"qid": qid, "image_name": image, "image_case_url": "https://medpix/x", "image_organ": organ,
            "answer": answer, "answer_type": "CLOSED", "question_type": "PRES", "question": question,
            "phrase_type": phrase, "qid_linked_id": "x"}


@pytest.fixture
def vqa_rad_root(tmp_path):
    root = tmp_path / "VQA_RAD"
    images = root / "VQA_RAD Image Folder"
    for name, size in (("synpic1.jpg", (14, 10)), ("synpic2.jpg", (9, 9))):
        write_image(str(images / name), size)
    records = [
        vqa_rad_record(11, "synpic1.jpg", "Is There A\tFracture?", "Yes"),
        vqa_rad_record(12, "synpic2.jpg", "How many lesions?", 5, "para", "HEAD"),
        vqa_rad_record(13, "synpic1.jpg", "Is the heart enlarged?", "no"),
        vqa_rad_record(14, "synpic2.jpg", "What organ?", "Brain", "test_freeform", "HEAD"),
        vqa_rad_record(15, "synpic1.jpg", "is it normal?", "yes", "test_para"),
    ]
    write_json(str(root / "VQA_RAD Dataset Public.json"), records)
    return root


def test_vqa_rad(vqa_rad_root, tmp_path):
    out = tmp_path / "out"
    report = vqa_rad.convert(str(vqa_rad_root), str(out))
    train, test = rows(out / "train.tsv"), rows(out / "test.tsv")
    assert (len(train), len(test)) == (3, 2)
    assert (report.split("train").written, report.split("test").written) == (3, 2)
    assert train[0][:5] == ["11", "synpic1", "is there afracture?", "1|!+yes", "chest"]  # tabs removed, lowercase
    assert train[1][3] == "1|!+5" and train[1][4] == "head"  # numeric answers become text
    assert image_size(train[0][5]) == (14, 10) and image_size(test[0][5]) == (9, 9)
    assert [r[0] for r in test] == ["14", "15"]  # test = phrase_type test_*
    # train + test answers, in order of first appearance; readable by the vqa_gen task's loader
    assert read_json(out / "trainval_ans2label.json") == {"yes": 0, "5": 1, "no": 2, "brain": 3}
    assert list(load_ans2label(None, str(out / "trainval_ans2label.json"))) == ["yes", "5", "no", "brain"]


def test_vqa_rad_mevf_layout(tmp_path):
    root = tmp_path / "data_RAD"
    write_image(str(root / "images" / "synpic7.jpg"), (8, 6))
    write_json(str(root / "trainset.json"), [vqa_rad_record(1, "synpic7.jpg", "Q1?", "A")])
    write_json(str(root / "testset.json"), [vqa_rad_record(2, "synpic7.jpg", "Q2?", "B", "test_para")])
    vqa_rad.convert(str(root), str(tmp_path / "out"))
    assert [r[:4] for r in rows(tmp_path / "out" / "train.tsv")] == [["1", "synpic7", "q1?", "1|!+a"]]
    assert [r[3] for r in rows(tmp_path / "out" / "test.tsv")] == ["1|!+b"]


def test_vqa_rad_missing_image_names_file_and_item(vqa_rad_root, tmp_path):
    os.remove(vqa_rad_root / "VQA_RAD Image Folder" / "synpic2.jpg")
    with pytest.raises(DataError) as info:
        vqa_rad.convert(str(vqa_rad_root), str(tmp_path / "out"))
    message = str(info.value)
    assert "VQA_RAD Dataset Public.json" in message and "qid 12" in message and "synpic2.jpg" in message
    assert info.value.column == "image" and "not found" in message
    assert not (tmp_path / "out" / "train.tsv").exists() and not (tmp_path / "out" / "train.tsv.tmp").exists()
    report = vqa_rad.convert(str(vqa_rad_root), str(tmp_path / "skip"), Options(skip_invalid=True))
    assert (report.split("train").written, report.split("train").skipped) == (2, 1)
    assert (report.split("test").written, report.split("test").skipped) == (1, 1)
    assert "qid 12" in report.split("train").errors[0]
    # answers of skipped rows are not in the answer set
    assert read_json(tmp_path / "skip" / "trainval_ans2label.json") == {"yes": 0, "no": 1}


def test_vqa_rad_corrupt_json(vqa_rad_root, tmp_path):
    path = vqa_rad_root / "VQA_RAD Dataset Public.json"
    path.write_text('[\n {"qid": 1,\n  "image_name": oops}\n]')
    with pytest.raises(DataError) as info:
        vqa_rad.convert(str(vqa_rad_root), str(tmp_path / "out"))
    assert info.value.path == str(path) and info.value.line == 3 and "not valid JSON" in str(info.value)


def test_vqa_rad_missing_field(vqa_rad_root, tmp_path):
    path = vqa_rad_root / "VQA_RAD Dataset Public.json"
    records = json.loads(path.read_text())
    del records[1]["answer"]
    write_json(str(path), records)
    with pytest.raises(DataError) as info:
        vqa_rad.convert(str(vqa_rad_root), str(tmp_path / "out"))
    assert info.value.column == "answer" and "item 1 (qid 12)" in str(info.value)
    assert "missing field 'answer'" in str(info.value)


# ---------------------------------------------------------------------------------------------- SLAKE
def slake_record(qid, img_id, question, answer, lang="en", location="Lung"):
    return {"img_id": img_id, "img_name": f"xmlab{img_id}/source.jpg", "question": question, "answer": answer,
            "q_lang": lang, "location": location, "modality": "CT", "answer_type": "OPEN", "base_type": "vqa",
            "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": qid}


def test_slake_keeps_english_only(tmp_path):
    root = tmp_path / "Slake1.0"
    for img_id, size in ((0, (10, 12)), (1, (6, 6))):
        write_image(str(root / "imgs" / f"xmlab{img_id}" / "source.jpg"), size)
    write_json(str(root / "train.json"), [
        slake_record(1, 0, "Which organ is abnormal?", "Lung"),
        slake_record(2, 0, "哪个器官不正常？", "肺", lang="zh"),
        slake_record(3, 1, "Is this a CT?", "Yes", location="Abdomen"),
    ])
    write_json(str(root / "validate.json"), [slake_record(4, 1, "Is it normal?", "No"),
                                             slake_record(5, 1, "这是CT吗？", "是", lang="zh")])
    write_json(str(root / "test.json"), [slake_record(6, 0, "What modality?", "CT"),
                                         slake_record(7, 1, "Where?", "Brain")])
    out = tmp_path / "out"
    report = slake.convert(str(root), str(out))
    train, val, test = (rows(out / f"{s}.tsv") for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (2, 1, 2)
    assert (report.split("train").filtered, report.split("val").filtered) == (1, 1)
    assert train[1][:5] == ["3", "1", "Is this a CT?", "1|!+Yes", "Abdomen"]  # text kept; location as objects
    assert image_size(train[0][5]) == (10, 12)
    assert all("zh" not in r[2] and "哪" not in r[2] for r in train + val)
    # English train + validation answers only
    assert read_json(out / "trainval_ans2label.json") == {"Lung": 0, "Yes": 1, "No": 2}


# ---------------------------------------------------------------------------------------------- PathVQA
def test_pathvqa_both_pickle_layouts(tmp_path):
    root = tmp_path / "pvqa"
    for split, names in (("train", ["train_0001", "train_0002"]), ("val", ["val_0001"]), ("test", ["test_0001"])):
        for name in names:
            write_image(str(root / "images" / split / f"{name}.jpg"), (16, 8))
    for split, records in (("train", [{"image": "train_0001", "question": "What is present?", "answer": "necrosis"},
                                      {"image": "train_0002", "question": "Is this normal?", "answer": "no"}]),
                           ("val", [{"image": "val_0001", "question": "Are nuclei lost?", "answer": "yes"}])):
        os.makedirs(root / "qas" / split)
        with open(root / "qas" / split / f"{split}_qa.pkl", "wb") as handle:
            pickle.dump(records, handle)
    with open(root / "qas" / "test_vqa.pkl", "wb") as handle:  # the LXMERT-style file of the reference
        pickle.dump([{"img_id": "test_0001", "question_id": 900001, "sent": "What is shown?",
                      "label": {"fibrosis": 1.0}, "answer_type": "other"}], handle)
    out = tmp_path / "out"
    pathvqa.convert(str(root), str(out))
    train, val, test = (rows(out / f"{s}.tsv") for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (2, 1, 1)
    assert train[0][:5] == ["train_0", "train_0001", "What is present?", "1|!+necrosis", ""]
    assert test[0][:4] == ["900001", "test_0001", "What is shown?", "1|!+fibrosis"]
    assert image_size(val[0][5]) == (16, 8)
    assert read_json(out / "trainval_ans2label.json") == {"necrosis": 0, "no": 1, "yes": 2}


def test_pathvqa_refuses_pickled_code(tmp_path):
    root = tmp_path / "pvqa"
    os.makedirs(root / "qas" / "train")
    with open(root / "qas" / "train" / "train_qa.pkl", "wb") as handle:
        pickle.dump([{"image": "x", "question": "q", "answer": os.getcwd}], handle)  # a global: refused
    with pytest.raises(DataError, match="plain data"):
        pathvqa.convert(str(root), str(tmp_path / "out"))


# ---------------------------------------------------------------------------------------------- MedMNIST
def test_medmnist(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.array([[i % 2] for i in range(n)], dtype=np.uint8)
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    blood = {f"{s}_images": rng.integers(0, 256, (2, 28, 28, 3), dtype=np.uint8) for s in ("train", "val", "test")}
    blood.update({f"{s}_labels": np.array([[3], [7]], dtype=np.uint8) for s in ("train", "val", "test")})
    np.savez(tmp_path / "bloodmnist.npz", **blood)
    out = tmp_path / "out"
    report = medmnist.convert(str(tmp_path), str(out))
    assert [s.name for s in report.splits] == ["blood train", "blood val", "blood test", "breast train",
                                               "breast val", "breast test"]
    train = rows(out / "breastmnist_train.tsv")
    assert len(train) == 3 and len(rows(out / "breastmnist_val.tsv")) == 2
    assert train[1][1:] == ["1", "normal, benign"] and train[0][1:] == ["0", "malignant"]
    image = decode_image(train[1][0])
    assert image.size == (28, 28)
    assert np.array_equal(np.asarray(image)[..., 0], arrays["train_images"][1])  # lossless, gray -> RGB
    blood_rows = rows(out / "bloodmnist_test.tsv")
    assert blood_rows[0][2].startswith("immature granulocytes") and blood_rows[1][1:] == ["7", "platelet"]
    assert np.array_equal(np.asarray(decode_image(blood_rows[1][0])), blood["test_images"][1])
    assert read_json(out / "breastmnist_class2label.json") == {"malignant": "0", "normal, benign": "1"}


def test_medmnist_bad_label(tmp_path):
    arrays = {f"{s}_images": np.zeros((2, 28, 28), np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": np.array([[0], [5]], np.uint8) for s in ("train", "val", "test")})
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    with pytest.raises(DataError, match=r"train item 1: label 5 outside 0\.\.1"):
        medmnist.convert(str(tmp_path), str(tmp_path / "out"))
    report = medmnist.convert(str(tmp_path), str(tmp_path / "out"), Options(skip_invalid=True))
    assert [(s.written, s.skipped) for s in report.splits] == [(1, 1)] * 3


# ---------------------------------------------------------------------------------------------- IU X-ray
def test_iu_xray_r2gen(tmp_path):
    root = tmp_path / "iu_xray"
    for study in ("CXR1_1_IM-0001", "CXR2_1_IM-0002", "CXR3_1_IM-0003", "CXR4_1_IM-0004"):
        for view in (0, 1):
            write_image(str(root / "images" / study / f"{view}.png"), (20, 18))
    write_json(str(root / "annotation.json"), {
        "train": [{"id": "CXR1_1_IM-0001", "report": "The lungs are clear.\nNo effusion.",
                   "image_path": ["CXR1_1_IM-0001/0.png", "CXR1_1_IM-0001/1.png"], "split": "train"},
                  {"id": "CXR2_1_IM-0002", "report": "Heart size normal.", "image_path": ["CXR2_1_IM-0002/0.png"],
                   "split": "train"}],
        "val": [{"id": "CXR3_1_IM-0003", "report": "Cardiomegaly.", "image_path": ["CXR3_1_IM-0003/0.png"],
                 "split": "val"}],
        "test": [{"id": "CXR4_1_IM-0004", "report": "No acute disease.", "image_path": ["CXR4_1_IM-0004/1.png"],
                  "split": "test"}]})
    out = tmp_path / "out"
    report = iu_xray.convert(str(root), str(out))
    train = rows(out / "iu_xray_train.tsv")
    assert len(train) == 3 and len(rows(out / "iu_xray_val.tsv")) == 1
    assert train[0][:4] == ["200_1", "CXR1_1_IM-0001/0", "The lungs are clear. No effusion.", ""]
    assert report.split("train").cleaned == 2  # the report's newline, in both rows of that study
    assert rows(out / "iu_xray_test.tsv")[0][:2] == ["200_5", "CXR4_1_IM-0004/1"]  # ids run across splits
    assert image_size(train[2][4]) == (20, 18)


def test_iu_xray_biocaption(tmp_path):
    root = tmp_path / "iu_xray"
    write_image(str(root / "iu_xray_images" / "CXR10_IM-0001-1001.png"), (7, 7))
    write_image(str(root / "iu_xray_images" / "CXR11_IM-0002-1001.png"), (7, 7))
    write_lines(str(root / "train_images.tsv"), ["CXR10_IM-0001-1001.png\tnormal chest. clear lungs."])
    write_lines(str(root / "test_images.tsv"), ['CXR11_IM-0002-1001.png\t"no" acute findings'])
    iu_xray.convert(str(root), str(tmp_path / "out"))
    assert rows(tmp_path / "out" / "iu_xray_train.tsv")[0][:3] == ["200_1", "CXR10_IM-0001-1001",
                                                                   "normal chest. clear lungs."]
    assert rows(tmp_path / "out" / "iu_xray_test.tsv")[0][2] == '"no" acute findings'  # no CSV unquoting


# ---------------------------------------------------------------------------------------------- PEIR Gross
def test_peir_gross_split_is_80_20_and_deterministic(tmp_path):
    root = tmp_path / "peir_gross"
    names = [f"PEIR_{i}.jpg" for i in range(7)]
    for name in names:
        write_image(str(root / "peir_gross_images" / name), (11, 9))
    write_lines(str(root / "train_images.tsv"), [f"{n}\tgross specimen number {i}" for i, n in enumerate(names[:5])])
    write_lines(str(root / "test_images.tsv"), [f"{n}\ttest specimen {n}" for n in names[5:]])
    report = peir_gross.convert(str(root), str(tmp_path / "a"))
    train, val = rows(tmp_path / "a" / "peir_gross_train.tsv"), rows(tmp_path / "a" / "peir_gross_val.tsv")
    assert [r[1] for r in train] == ["PEIR_0", "PEIR_1", "PEIR_2", "PEIR_3"] and [r[1] for r in val] == ["PEIR_4"]
    assert train[0][:4] == ["3_1", "PEIR_0", "gross specimen number 0", ""]
    assert [r[0] for r in rows(tmp_path / "a" / "peir_gross_test.tsv")] == ["3_6", "3_7"]
    assert [s.written for s in report.splits] == [4, 1, 2]
    assert image_size(val[0][4]) == (11, 9)
    peir_gross.convert(str(root), str(tmp_path / "b"))
    for name in ("train", "val", "test"):
        a = (tmp_path / "a" / f"peir_gross_{name}.tsv").read_bytes()
        assert a == (tmp_path / "b" / f"peir_gross_{name}.tsv").read_bytes()


# ---------------------------------------------------------------------------------------------- ROCO
def test_roco(tmp_path):
    data = tmp_path / "roco-dataset" / "data"
    for split, ids in (("train", ["ROCO_00001", "ROCO_00002"]), ("validation", ["ROCO_00020"]),
                       ("test", ["ROCO_00030"])):
        folder = data / split / "radiology"
        write_lines(str(folder / "captions.txt"), [f"{i}\t Caption of {i} (arrow). " for i in ids])
        write_lines(str(folder / "dlinks.txt"), [
            f"{i}\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/aa/bb/PMC{n}.tar.gz -P /path/to/Dir\t"
            f"fig{n}.jpg" for n, i in enumerate(ids)])
        for n, i in enumerate(ids):  # fetch.py names the first image of each split, the renamed copy the rest
            write_image(str(folder / "images" / (f"PMC{n}_fig{n}.jpg" if n == 0 else f"{i}.jpg")), (13, 7))
        other = data / split / "non-radiology"
        write_lines(str(other / "captions.txt"), [f"ROCO_9{split[:3]}\t a photograph"])
    out = tmp_path / "out"
    roco.convert(str(data.parent), str(out))
    train = rows(out / "roco_train.tsv")
    assert [r[:4] for r in train] == [["1500_1", "ROCO_00001", "Caption of ROCO_00001 (arrow).", ""],
                                      ["1500_2", "ROCO_00002", "Caption of ROCO_00002 (arrow).", ""]]
    assert rows(out / "roco_val.tsv")[0][:2] == ["1500_3", "ROCO_00020"]
    assert len(rows(out / "roco_test.tsv")) == 1  # non-radiology left out by default
    assert image_size(train[1][4]) == (13, 7)
    with pytest.raises(DataError, match="ROCO_9tra"):  # --subset all: its images are missing here
        roco.convert(str(data.parent), str(tmp_path / "all"), subset="all")


# ---------------------------------------------------------------------------------------------- MeQSum
def xlsx(path, table):
    """A minimal .xlsx (shared strings, one rich-text cell, one inline string) holding `table`."""
    strings, sheet_rows = [], []
    for r, row in enumerate(table, 1):
        cells = []
        for c, value in enumerate(row):
            ref = f"{chr(65 + c)}{r}"
            if isinstance(value, tuple):  # rich text runs
                strings.append("".join(f"<r><t xml:space=\"preserve\">{escape(v)}</t></r>" for v in value))
                cells.append(f'<c r="{ref}" t="s"><v>{len(strings) - 1}</v></c>')
            elif c == 0:
                cells.append(f'<c r="{ref}" t="inlineStr"><is><t>{escape(value)}</t></is></c>')
            else:
                strings.append(f"<t xml:space=\"preserve\">{escape(value)}</t>")
                cells.append(f'<c r="{ref}" t="s"><v>{len(strings) - 1}</v></c>')
        sheet_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("xl/workbook.xml", f'<workbook xmlns="{main}" xmlns:r="{rel}"><sheets>'
                                            f'<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>')
        archive.writestr("xl/_rels/workbook.xml.rels",
                         '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                         '<Relationship Id="rId1" Type="x" Target="worksheets/data.xml"/></Relationships>')
        archive.writestr("xl/sharedStrings.xml", f'<sst xmlns="{main}">' + "".join(f"<si>{s}</si>" for s in strings)
                         + "</sst>")
        archive.writestr("xl/worksheets/data.xml", f'<worksheet xmlns="{main}"><sheetData>{"".join(sheet_rows)}'
                                                   f"</sheetData></worksheet>")


def test_meqsum_xlsx(tmp_path):
    table = [["File", "CHQ", "Summary"]]
    for i in range(5):
        table.append([f"{i}.txt", f"SUBJECT: question {i}\nMESSAGE: details\tof {i}", f"What about {i}?"])
    table[2][1] = ("SUBJECT: rich ", "text question")  # rich-text cell
    table[3][2] = "Excel_x000D_\nescapes?"  # Excel writes a carriage return as _x000D_
    xlsx(tmp_path / "MeQSum_ACL2019_BenAbacha_Demner-Fushman.xlsx", table)
    out = tmp_path / "out"
    report = meqsum.convert(str(tmp_path), str(out), split_sizes="3,1")
    train = rows(out / "train.tsv")
    assert (len(train), len(rows(out / "val.tsv")), len(rows(out / "test.tsv"))) == (3, 1, 1)
    assert train[0] == ["SUBJECT: question 0 MESSAGE: details of 0", "What about 0?"]
    assert train[1] == ["SUBJECT: rich text question", "What about 1?"]
    assert train[2][1] == "Excel escapes?"
    assert report.split("train").cleaned == 3 and rows(out / "test.tsv")[0][1] == "What about 4?"


def test_meqsum_csv_and_missing_summary(tmp_path):
    path = tmp_path / "meqsum.csv"
    path.write_text('File,CHQ,Summary\n1,"multi\nline question",short?\n2,second question,\n3,third,q3?\n')
    with pytest.raises(DataError) as info:
        meqsum.convert(str(path), str(tmp_path / "out"), split_sizes="1,1")
    assert info.value.path == str(path) and info.value.line == 4 and info.value.column == "target"
    report = meqsum.convert(str(path), str(tmp_path / "out"), Options(skip_invalid=True), split_sizes="1,1")
    assert rows(tmp_path / "out" / "train.tsv") == [["multi line question", "short?"]]
    assert (report.split("val").skipped, report.split("test").written) == (1, 1)


# ---------------------------------------------------------------------------------------------- MedNLI
def test_mednli(tmp_path):
    def line(pair, s1, s2, label):
        return json.dumps({"sentence1": s1, "pairID": pair, "sentence1_parse": "(ROOT)", "sentence2": s2,
                           "gold_label": label})
    write_lines(str(tmp_path / "mli_train_v1.jsonl"), [
        line("a1", " Patient has\tfever. ", "Patient is febrile.", "entailment"),
        line("a2", "No pain.", "Patient has pain.", "contradiction"),
        line("a3", "BP normal.", "Patient is old.", "neutral"),
        line("a4", "Unclear.", "Unclear too.", "-")])
    write_lines(str(tmp_path / "mli_dev_v1.jsonl"), [line("b1", "x", "y", "neutral")])
    write_lines(str(tmp_path / "mli_test_v1.jsonl"), [line("c1", "x", "y", "entailment"), "{not json"])
    with pytest.raises(DataError) as info:
        mednli.convert(str(tmp_path), str(tmp_path / "out"))
    assert info.value.path.endswith("mli_test_v1.jsonl") and info.value.line == 2
    assert os.listdir(tmp_path / "out") == []  # all splits are published together, or none
    report = mednli.convert(str(tmp_path), str(tmp_path / "out"), Options(skip_invalid=True))
    train = rows(tmp_path / "out" / "mednli_train.tsv")
    assert train[0] == ["Patient has fever.", "Patient is febrile.", "1", "clinical:Patient has fever."]
    assert [r[2] for r in train] == ["1", "2", "0"] and report.split("train").filtered == 1
    assert (report.split("test").written, report.split("test").skipped) == (1, 1)
