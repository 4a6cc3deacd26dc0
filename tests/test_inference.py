"""One image, one question: the Python API and `biomedgpt-ask` on checkpoints trained by fairseq-train."""
import base64

import pytest

from synthetic import image_b64, write_task_data
from test_tasks_e2e import fairseq_train


@pytest.fixture(scope="module")
def vqa_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vqa")
    data = write_task_data(str(folder), "vqa_gen")
    fairseq_train(data, "vqa_gen", folder / "ckpt", max_update=12, lr="2e-3")
    images = []
    for colour in ("red", "green", "blue"):
        path = folder / f"{colour}.png"
        path.write_bytes(base64.b64decode(image_b64(colour, seed=99)))
        images.append(str(path))
    return str(folder / "ckpt" / "checkpoint_last.pt"), images


@pytest.mark.slow
def test_answer_and_answer_many_agree(vqa_checkpoint):
    from biomedgpt.inference import load

    path, images = vqa_checkpoint
    model = load(path, device="cpu")
    single = [model.answer(image, "what colour is the image?") for image in images]
    batched = model.answer_many(images, ["what colour is the image?"] * 3, batch_size=2)
    assert [a for a, _ in single] == [a for a, _ in batched]
    for (answer, prob), (_, prob_batched) in zip(single, batched):
        assert answer in {"red", "green", "blue"}
        assert 0 < prob <= 1 and prob == pytest.approx(prob_batched, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_weights_answer_like_fp32(vqa_checkpoint, dtype):
    """`load(..., dtype=...)` casts the weights; the caller passes ordinary images (no casting on their side)."""
    import torch

    from biomedgpt.inference import load

    path, images = vqa_checkpoint
    reference = load(path, device="cpu").answer_many(images, ["what colour is the image?"] * 3)
    model = load(path, device="cpu", dtype=getattr(torch, dtype))
    assert model.model.encoder.embed_images.conv1.weight.dtype == getattr(torch, dtype)
    low = model.answer_many(images, ["what colour is the image?"] * 3)
    assert [a for a, _ in low] == [a for a, _ in reference]
    for (_, p_low), (_, p_ref) in zip(low, reference):
        assert p_low == pytest.approx(p_ref, abs=0.05)


@pytest.mark.slow
def test_ask_command_prints_answer_and_probability(vqa_checkpoint, capsys):
    from biomedgpt.cli.ask import main

    path, images = vqa_checkpoint
    assert main(["--path", path, "--image", images[0], "--question", "what colour is the image?", "--cpu"]) == 0
    image, answer, probability = capsys.readouterr().out.strip().split("\t")
    assert image == images[0] and answer in {"red", "green", "blue"} and 0 < float(probability) <= 1
    assert main(["--path", path, "--image", images[0] + ".missing", "--question", "x", "--cpu"]) == 2


@pytest.fixture(scope="module")
def dicom_file():
    """A CT slice shipped with pydicom (no network)."""
    from pydicom.data import get_testdata_file

    return get_testdata_file("CT_small.dcm")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["image_classify", "caption"])
def test_ask_command_without_a_question_for_classes_and_captions(task, tmp_path, dicom_file, capsys):
    """Classification checkpoints answer one of their classes, caption checkpoints a generated caption; a PNG and a
    DICOM file are read the same way."""
    from biomedgpt.cli.ask import main

    data = write_task_data(str(tmp_path), task)
    fairseq_train(data, task, tmp_path / "ckpt", max_update=6, lr="2e-3")
    png = tmp_path / "red.png"
    png.write_bytes(base64.b64decode(image_b64("red", seed=5)))
    assert main(["--path", str(tmp_path / "ckpt" / "checkpoint_last.pt"), "--image", str(png), dicom_file,
                 "--cpu", "--beam", "2"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [line[0] for line in lines] == [str(png), dicom_file]
    for _, answer, probability in lines:
        assert 0 < float(probability) <= 1
        if task == "image_classify":
            assert answer in {"red", "green", "blue"}
        else:
            assert answer and "<" not in answer  # decoded text, no special symbols
