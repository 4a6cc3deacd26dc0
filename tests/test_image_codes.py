"""`biomedgpt-image-codes` (biomedgpt.cli.image_codes): output layouts, agreement with the Python API, resuming after
a crash, and bad rows. Uses a tiny random-weight VQ-GAN (`--random-init`), so codes are meaningless but exact."""
import base64
import io
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from synthetic import image_b64
from test_vqgan import write_tiny_config

from biomedgpt.cli.image_codes import main, trim_and_count
from biomedgpt.data.image import decode_image
from biomedgpt.vqgan import GumbelVQ, images_to_batch

COLOURS = ["red", "green", "blue", "red", "green", "blue", "red"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("codes")
    config = write_tiny_config(folder)
    images = [image_b64(colour, 24 + 8 * i, seed=i) for i, colour in enumerate(COLOURS)]
    two = _write(folder / "two.tsv", [[f"img{i}", b64] for i, b64 in enumerate(images)])
    four = _write(folder / "four.tsv", [[f"p{i}", f"img{i}", b64, f"text number {i}"] for i, b64 in enumerate(images)])
    return {"folder": folder, "config": config, "images": images, "two": two, "four": four}


def _write(path, rows):
    with open(path, "w") as handle:
        for row in rows:
            handle.write("\t".join(row) + "\n")
    return str(path)


def run_cli(work, input_path, output, *extra):
    argv = ["--input", str(input_path), "--output", str(output), "--vq-config", work["config"], "--random-init",
            "--batch-size", "3", "--device", "cpu", "--quiet", *extra]
    return main(argv)


def expected_codes(work, b64_images, seed=1):
    """What the command must write: the Python API on the same seeded random model."""
    torch.manual_seed(seed)
    model = GumbelVQ.from_config(work["config"])
    batch = images_to_batch([decode_image(text) for text in b64_images], 128)
    return [" ".join(map(str, row)) for row in model.encode_to_codes(batch).flatten(1).tolist()]


def test_two_column_layout_matches_python_api(work, capsys):
    output = work["folder"] / "two_out.tsv"
    assert run_cli(work, work["two"], output) == 0
    rows = [line.split("\t") for line in output.read_text().splitlines()]
    assert [row[0] for row in rows] == [f"img{i}" for i in range(len(COLOURS))]
    assert all(len(row) == 2 for row in rows)
    codes = [list(map(int, row[1].split(" "))) for row in rows]
    assert all(len(c) == 256 and min(c) >= 0 and max(c) < 64 for c in codes)
    assert [row[1] for row in rows] == expected_codes(work, work["images"])
    assert "MEANINGLESS" in capsys.readouterr().err


def test_four_column_layout(work):
    output = work["folder"] / "four_out.tsv"
    assert run_cli(work, work["four"], output, "--selected-cols", "0,1,2,3") == 0
    rows = [line.split("\t") for line in output.read_text().splitlines()]
    assert [row[:3] for row in rows] == [[f"p{i}", f"img{i}", f"text number {i}"] for i in range(len(COLOURS))]
    assert [row[3] for row in rows] == expected_codes(work, work["images"])


def test_with_image_writes_full_image_and_centre_codes(work):
    exact = image_b64("blue", 256, seed=9)  # already 2S x 2S: passed through unchanged
    other = image_b64("red", 100, seed=8)  # resized to 256 x 256 and re-encoded
    source = _write(work["folder"] / "mim.tsv", [["a", exact], ["b", other]])
    output = work["folder"] / "mim_out.tsv"
    assert run_cli(work, source, output, "--with-image") == 0
    rows = [line.split("\t") for line in output.read_text().splitlines()]
    assert [row[0] for row in rows] == ["a", "b"] and rows[0][1] == exact
    full = [Image.open(io.BytesIO(base64.b64decode(row[1]))).convert("RGB") for row in rows]
    assert [image.size for image in full] == [(256, 256), (256, 256)]
    assert full[1].tobytes() == decode_image(other).resize((256, 256), Image.BICUBIC).tobytes()
    centres = []
    for image in full:
        buffer = io.BytesIO()
        image.crop((64, 64, 192, 192)).save(buffer, format="PNG")
        centres.append(base64.b64encode(buffer.getvalue()).decode())
    assert [row[2] for row in rows] == expected_codes(work, centres)


def test_resume_after_crash_is_byte_identical(work):
    reference = work["folder"] / "full.tsv"
    assert run_cli(work, work["two"], reference, "--sample") == 0
    data = reference.read_bytes()
    lines = data.splitlines(keepends=True)
    output = work["folder"] / "resumed.tsv"
    cases = [data[: len(lines[0]) + len(lines[1]) + len(lines[2]) // 2],  # crash mid-line
             b"".join(lines[:4]),  # crash between batches, 4 of 7 rows kept (not on a batch boundary of 3)
             b"", data]  # nothing written yet / already complete
    for partial in cases:
        output.write_bytes(partial)
        assert run_cli(work, work["two"], output, "--sample") == 0
        assert output.read_bytes() == data
    output.write_bytes(b"garbage\tline\n")
    assert run_cli(work, work["two"], output, "--sample", "--overwrite") == 0
    assert output.read_bytes() == data
    # --sample draws differ from the argmax somewhere (the tiny random model is not confident)
    assert [line.split(b"\t")[1].decode() for line in data.splitlines()] != expected_codes(work, work["images"])


def test_resume_refuses_an_output_of_another_input(work, capsys):
    output = work["folder"] / "foreign.tsv"
    output.write_text("other0\t1 2 3\n")
    assert run_cli(work, work["two"], output) == 2
    err = capsys.readouterr().err
    assert "does not continue" in err and "--overwrite" in err
    assert output.read_text() == "other0\t1 2 3\n"


def test_trim_and_count(tmp_path):
    path = tmp_path / "x.tsv"
    for content, expected in ((b"a\tb\nc\td\nhalf", (2, b"c\td")), (b"", (0, b"")), (b"half", (0, b"")),
                              (b"one\n", (1, b"one"))):
        path.write_bytes(content)
        assert trim_and_count(str(path)) == expected
        assert path.read_bytes() == content[: content.rfind(b"\n") + 1]


def _with_bad_rows(work):
    rows = [[f"img{i}", b64] for i, b64 in enumerate(work["images"][:5])]
    rows[2][1] = "%%% not base64 %%%"
    rows[3][1] = base64.b64encode(b"plain text, not an image").decode()
    return _write(work["folder"] / "bad.tsv", rows)


def test_bad_row_stops_with_file_and_line(work, capsys):
    source = _with_bad_rows(work)
    output = work["folder"] / "bad_out.tsv"
    assert run_cli(work, source, output) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1
    assert source in errors[0] and "line 3" in errors[0] and "column 'image'" in errors[0] and "base64" in errors[0]
    assert [line.split("\t")[0] for line in output.read_text().splitlines()] == ["img0", "img1"]


def test_skip_invalid_rows_and_resume_over_them(work, capsys):
    source = _with_bad_rows(work)
    output = work["folder"] / "skip_out.tsv"
    assert run_cli(work, source, output, "--skip-invalid-rows", "--overwrite") == 0
    data = output.read_bytes()
    assert [line.split("\t")[0] for line in data.decode().splitlines()] == ["img0", "img1", "img4"]
    assert [line.split("\t")[1] for line in data.decode().splitlines()] == \
        expected_codes(work, [work["images"][i] for i in (0, 1, 4)])
    skipped = (work["folder"] / "skip_out.tsv.skipped").read_text().splitlines()
    assert [line.split("\t")[:2] for line in skipped] == [["2", "3"], ["3", "4"]]
    assert "not valid base64" in skipped[0] and "not a readable image" in skipped[1]
    assert "2 invalid rows skipped" in capsys.readouterr().err
    for keep in (3, 2, 1):  # resume after, right before and well before the skipped rows
        output.write_bytes(b"".join(data.splitlines(keepends=True)[:keep]))
        assert run_cli(work, source, output, "--skip-invalid-rows") == 0
        assert output.read_bytes() == data
        assert (work["folder"] / "skip_out.tsv.skipped").read_text().splitlines() == skipped


def test_wrong_column_count_and_missing_checkpoint(work, capsys):
    source = _write(work["folder"] / "short.tsv", [["p0", "img0", work["images"][0], "t"], ["p1", "img1"]])
    assert run_cli(work, source, work["folder"] / "short_out.tsv", "--selected-cols", "0,1,2,3") == 2
    err = capsys.readouterr().err
    assert "short.tsv, line 2" in err and "2 columns" in err
    with pytest.raises(SystemExit):
        main(["--input", work["two"], "--output", str(work["folder"] / "x.tsv"), "--vq-config", work["config"]])
    assert "--vq-ckpt" in capsys.readouterr().err
    assert main(["--input", work["two"], "--output", str(work["folder"] / "y.tsv"), "--vq-config", work["config"],
                 "--vq-ckpt", str(work["folder"] / "absent.ckpt"), "--quiet"]) == 2
    assert "absent.ckpt" in capsys.readouterr().err


@pytest.mark.slow
def test_runs_as_module(work):
    output = work["folder"] / "module_out.tsv"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "biomedgpt.cli.image_codes", "--input", work["two"],
                             "--output", str(output), "--vq-config", work["config"], "--random-init", "--quiet",
                             "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = "".join(f"img{i}\t{codes}\n" for i, codes in enumerate(expected_codes(work, work["images"])))
    assert output.read_text() == expected
