"""The real MeQSum TSVs (BiomedGPT's summarisation data, `source<TAB>target`) read and train unmodified with
`--task gigaword --selected-cols 0,1`: every row is read and encodes, and a few `fairseq-train` updates with
ROUGE validation finish. Skipped when the data folder (../shared/data/meqsum, or $BIOMEDGPT_MEQSUM_DIR) is absent.
"""
import os
import re
import subprocess
import sys

import pytest

from conftest import build

from biomedgpt.data.tsv import IndexedTSV

MEQSUM_DIR = os.environ.get("BIOMEDGPT_MEQSUM_DIR",
                            os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "meqsum"))
TRAIN, VALID = "train.tsv", "val.tsv"
TINY = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
        "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2"]
MAX_SRC, MAX_TGT = 128, 30  # the task defaults, given explicitly so the checks below read them


def meqsum_paths():
    paths = [os.path.join(MEQSUM_DIR, name) for name in (TRAIN, VALID)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        pytest.skip(f"MeQSum data not found: {', '.join(os.path.normpath(p) for p in missing)} "
                    f"(expected {TRAIN} and {VALID} in ../shared/data/meqsum; or set BIOMEDGPT_MEQSUM_DIR)")
    return paths


def non_empty_lines(path):
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip(b"\r\n"))


@pytest.fixture(scope="module")
def task():
    train, valid = meqsum_paths()
    _, task, _ = build("ofa_tiny", ["--task=gigaword", "--selected-cols", "0,1", "--max-src-length", str(MAX_SRC),
                                    "--max-tgt-length", str(MAX_TGT), *TINY], data=f"{train},{valid}")
    return task


@pytest.mark.parametrize("split, name", [("train", TRAIN), ("valid", VALID)])
def test_dataset_reads_every_row(task, split, name):
    path = os.path.join(MEQSUM_DIR, name)
    rows = len(IndexedTSV(path, [0, 1], cache_index=False))
    assert rows == non_empty_lines(path) > 0
    task.load_dataset(split)
    dataset = task.dataset(split)
    assert os.path.samefile(dataset.tsv.path, path)
    assert len(dataset) == rows


@pytest.mark.parametrize("split", ["train", "valid"])
def test_every_row_encodes(task, split):
    task.load_dataset(split)
    dataset = task.dataset(split)
    dictionary = task.source_dictionary
    bos, eos, pad = dictionary.bos(), dictionary.eos(), dictionary.pad()
    truncated = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample is not None, index
        source, target, prev = sample["source"], sample["target"], sample["prev_output_tokens"]
        assert source[0] == bos and source[-1] == eos, index
        assert 2 < len(source) <= MAX_SRC + 2, (index, len(source))  # bos + at most MAX_SRC tokens + eos
        truncated += len(source) == MAX_SRC + 2
        assert target[-1] == eos and len(target) >= 2 and prev[0] == bos and len(prev) == len(target), index
        for tokens in (source[1:-1], target[:-1], prev[1:]):
            assert not ((tokens == bos) | (tokens == eos) | (tokens == pad)).any(), index
        assert sample["target_str"].strip(), index
        # the target text is cut at MAX_TGT words (the reference caps summaries by words, not tokens)
        assert len(task.text.decode(target).split()) <= MAX_TGT, index
    assert dataset.skipped_rows == 0
    if split == "train":
        assert truncated > 0  # MeQSum questions are long: the source cap is exercised
    batch = dataset.collater([dataset[i] for i in range(min(8, len(dataset)))])
    assert batch["net_input"]["src_tokens"].size(1) <= MAX_SRC + 2


@pytest.mark.slow
def test_fairseq_train_with_rouge_validation(tmp_path):
    import shutil

    # copies: the reader caches its index beside the data, and the shared folder is not ours to write
    train, valid = (shutil.copy(path, tmp_path / os.path.basename(path)) for path in meqsum_paths())
    cmd = [sys.executable, "-m", "fairseq_cli.train", f"{train},{valid}", "--user-dir",
           os.path.dirname(__import__("biomedgpt").__file__), "--task", "gigaword", "--selected-cols", "0,1",
           "--arch", "ofa_tiny", *TINY, "--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing",
           "0.1", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "8", "--batch-size-valid", "25",
           "--cpu", "--max-update", "4", "--validate-interval-updates", "4",
           "--eval-rouge", "--eval-args", '{"beam":2,"max_len_b":16}', "--no-save", "--save-dir", str(tmp_path),
           "--log-format", "simple", "--log-interval", "1", "--num-workers", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    rows = len(IndexedTSV(train, cache_index=False))
    assert f"train: {rows} rows from {train}" in log, log[-3000:]
    assert "num_updates=4" in log or "num_updates 4" in log, log[-3000:]
    assert re.search(r"valid on 'valid' subset \|.* rougeL_f1 [\d.]+", log), log[-3000:]
    assert "skipping invalid row" not in log
