"""Pretraining (`unify_task`): span masking, location bins and code offsets by hand; samples that depend only on
(seed, epoch, row); negatives without `--neg-sample-dir`; and a tiny `fairseq-train` run on all four TSVs (image
codes from a random-weight GumbelVQ) that logs both batch kinds and resumes to the same losses."""
import os
import re

import numpy as np
import pytest
import torch

from conftest import build
from synthetic import write_pretrain_sources
from test_image_codes import run_cli
from test_tasks_e2e import TINY, run_fairseq_train
from test_vqgan import write_tiny_config

from biomedgpt.data.locations import box_to_bins, quantize
from biomedgpt.data.negatives import NegativeSamples
from biomedgpt.data.span_masking import apply_spans, choose_spans, mask_spans, word_bounds

MASK = 99


# ------------------------------------------------------------------------------------------------ by hand
def test_word_bounds_group_tokens_into_words():
    assert word_bounds([True, False, True, True, False, False]) == [(0, 2), (2, 3), (3, 6)]
    assert word_bounds([False, True]) == [(0, 1), (1, 2)]  # the first token always starts a word


def test_apply_spans_replaces_each_merged_span_by_one_mask():
    ids = torch.tensor([10, 11, 12, 13, 14, 15, 16])
    bounds = [(0, 2), (2, 3), (3, 4), (4, 6), (6, 7)]  # words: [10 11] [12] [13] [14 15] [16]
    rng = np.random.default_rng(0)
    # spans (word 1, 2 words) and (word 2, 1 word) overlap -> one span over words 1-2; (word 4, 1 word) another
    out = apply_spans(ids, bounds, [(1, 2), (2, 1), (4, 1)], MASK, rng)
    assert out.tolist() == [10, 11, MASK, 14, 15, MASK]
    assert apply_spans(ids, bounds, [(3, 1)], MASK, rng, replace_length=-1).tolist() == [10, 11, 12, 13, MASK, MASK, 16]
    assert apply_spans(ids, bounds, [(3, 1)], MASK, rng, replace_length=0).tolist() == [10, 11, 12, 13, 16]
    assert apply_spans(ids, bounds, [(0, 5)], MASK, rng, keep_ratio=1.0).tolist() == ids.tolist()
    randomised = apply_spans(ids, bounds, [(0, 1)], MASK, rng, random_ratio=1.0, random_range=(20, 30))
    assert len(randomised) == 6 and 20 <= randomised[0] < 30 and randomised[1:].tolist() == [12, 13, 14, 15, 16]


def test_choose_spans_covers_the_mask_ratio_of_the_words():
    rng = np.random.default_rng(1)
    for num_words in (1, 7, 40):
        spans = choose_spans(num_words, 0.3, rng)
        assert sum(n for _, n in spans) == int(np.ceil(num_words * 0.3))  # lengths add up to ceil(0.3 * words)
        assert len({s for s, _ in spans}) == len(spans) and all(0 <= s < num_words for s, _ in spans)
    assert choose_spans(10, 0.3, rng, mask_length="word") and all(n == 1 for _, n in choose_spans(10, 0.3, rng, mask_length="word"))
    assert choose_spans(0, 0.3, rng) == [] and choose_spans(10, 0.0, rng) == []


def test_mask_spans_is_a_function_of_the_generator_seed():
    ids = torch.arange(100, 130)
    starts = [i % 2 == 0 for i in range(30)]
    first = mask_spans(ids, starts, MASK, np.random.default_rng([7, 1, 3]))
    assert torch.equal(first, mask_spans(ids, starts, MASK, np.random.default_rng([7, 1, 3])))
    assert MASK in first.tolist() and len(first) < len(ids)


def test_location_bins_by_hand():
    # k = round(coord / 512 * 999), clamped to [0, 512]
    assert [quantize(c, 512, 1000) for c in (0, 100, 256.3, 512, 600, -3)] == [0, 195, 500, 999, 999, 0]
    assert box_to_bins([0, 100, 256.3, 512], 512, 1000) == "<bin_0> <bin_195> <bin_500> <bin_999>"


# ------------------------------------------------------------------------------------------------ dataset
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrain")
    sources = write_pretrain_sources(str(folder))
    work = {"config": write_tiny_config(folder)}
    image_tsv = folder / "image.tsv"
    assert run_cli(work, sources["images"], image_tsv, "--with-image") == 0  # id, 256x256 image, 256 codes
    sources["image"] = str(image_tsv)
    return sources


def unify_task(corpus, *extra):
    flags = ["--text-data", corpus["text"], "--image-data", corpus["image"], "--detection-data", corpus["detection"],
             "--selected-cols", "0,1,2,3,4,5,6,7", "--patch-image-size", "64", *extra]
    _, task, _ = build("ofa_tiny", flags, data=corpus["vision_language"], task="unify_task")
    task.load_dataset("train")
    return task, task.datasets["train"]


def test_code_tokens_follow_the_gpt2_words_and_mask(corpus):
    task, dataset = unify_task(corpus)
    assert dataset.first_code == 50265 and task.src_dict[50265] == "<code_0>" and task.src_dict[50265 + 8191] == "<code_8191>"
    pairs, extras = dataset[0]
    infill = [e for e in extras if e["code_mask"]][0]
    with open(corpus["image"]) as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle]
    codes = infill["target"][:-1] - 50265
    assert any(codes.tolist() == [int(c) for c in row[2].split()] for row in rows)
    centre = infill["patch_image"][:, 64:192, 64:192]
    assert infill["patch_image"].shape == (3, 256, 256) and torch.count_nonzero(centre) == 0


def test_samples_depend_only_on_seed_epoch_and_row(corpus):
    _, dataset = unify_task(corpus)
    rows = [0, 1, 2, 8]

    def fingerprint():
        out = []
        for index in rows:
            pairs, extras = dataset[index]
            out.append([(s["source"].tolist(), s["target"].tolist(), float(s["patch_image"].sum())) for s in pairs + extras])
        return out

    first = fingerprint()
    assert fingerprint() == first  # re-reading (another worker, a resumed run) gives the same samples
    assert fingerprint()[::-1] == [fingerprint()[i] for i in (3, 2, 1, 0)]
    dataset.set_epoch(2)
    assert fingerprint() != first


def test_every_sub_task_of_a_row(corpus):
    task, dataset = unify_task(corpus)
    decode = lambda ids: task.src_dict.string(ids)  # noqa: E731
    text = task.text.decode
    caption, answer, grounding = (dataset[i][0] for i in (0, 1, 2))
    assert text(caption[0]["source"]) == "what does the image describe?"
    assert text(caption[0]["target"]) == "a red square on grey"
    assert text(caption[1]["target"]) in ("yes", "no") and "does the image describe" in text(caption[1]["source"])
    assert text(answer[0]["target"]) == "red" and answer[0]["conf"] == 1.0
    assert text(grounding[0]["source"]) == 'which region does the text " the red square " describe?'
    bins = decode(grounding[0]["target"]).split()
    assert len(bins) == 4 and all(b.startswith("<bin_") for b in bins)
    assert text(grounding[1]["target"]) == "the red square" and decode(grounding[1]["source"]).endswith(" ".join(bins))
    extras = dataset[8][1]
    assert [e["code_mask"] for e in extras] == [False, False, True, False] and all(e["conf"] == 2.0 for e in extras)
    infilling = text(extras[0]["source"])
    assert infilling.startswith('what is the complete text of "') and "<mask>" in decode(extras[0]["source"])
    assert not extras[0]["patch_mask"] and extras[0]["patch_image"].abs().sum() == 0
    detection = decode(extras[3]["target"]).split()
    assert detection[0].startswith("<bin_") and "square" in text(extras[3]["target"])
    assert dataset[1][1] == []  # only every 8th row has extra samples
    v1, v2 = dataset.collater([dataset[i] for i in range(9)])
    assert v1["net_input"]["patch_images"].shape[-1] == 64 and "code_masks" not in v1["net_input"]
    assert v2["net_input"]["code_masks"].tolist() == [False, False, True, False] * 2
    assert isinstance(dataset.collater([dataset[1], dataset[2]]), dict)  # no extras: one batch


def test_negatives_are_derived_from_the_data_without_neg_sample_dir(corpus):
    with open(corpus["vision_language"]) as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle]
    negatives = NegativeSamples.load(None, rows)
    assert negatives.captions == ["a blue square on grey", "a green square on grey", "a red square on grey"]
    assert "dark red" in negatives.all_answers and negatives.objects == ["grey", "square"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert negatives.negative_answer("red", rng) not in (None, "red")
        assert negatives.negative_caption("a red square on grey", ["square"], rng) != "a red square on grey"


def test_validation_split_is_refused_with_advice(corpus):
    task, _ = unify_task(corpus)
    with pytest.raises(ValueError, match="--disable-validation"):
        task.load_dataset("valid")


# ------------------------------------------------------------------------------------------------ fairseq-train
def pretrain(corpus, save_dir, max_update, *extra):
    return run_fairseq_train([
        corpus["vision_language"], "--task", "unify_task", *TINY, "--patch-image-size", "64",
        "--selected-cols", "0,1,2,3,4,5,6,7", "--text-data", corpus["text"], "--text-selected-cols", "0,1",
        "--image-data", corpus["image"], "--image-selected-cols", "0,1,2", "--detection-data", corpus["detection"],
        "--detection-selected-cols", "0,1,2", "--criterion", "adjust_label_smoothed_cross_entropy",
        "--sample-patch-num", "8", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "4", "--cpu",
        "--max-update", str(max_update), "--save-dir", str(save_dir), "--disable-validation", "--log-format",
        "simple", "--log-interval", "1", "--save-interval-updates", "2", "--num-workers", "0", "--seed", "3", *extra])


def logged_losses(log):
    """num_updates -> loss of each `train_inner` line."""
    return {u: loss for loss, u in re.findall(r"\| train_inner \|.*? loss=([\d.]+),.*? num_updates=(\d+)", log)}


@pytest.mark.slow
def test_pretraining_logs_both_batches_and_resumes_to_the_same_losses(corpus, tmp_path):
    straight = pretrain(corpus, tmp_path / "straight", 4)
    losses = logged_losses(straight)
    assert re.search(r"loss_v1=[\d.]+.*loss_v2=[\d.]+", straight), straight[-3000:]
    pretrain(corpus, tmp_path / "resumed", 2)
    resumed = pretrain(corpus, tmp_path / "resumed", 4, "--num-workers", "2")
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 2 updates\)", resumed), resumed[-3000:]
    again = logged_losses(resumed)
    assert set(again) == {"3", "4"}
    assert {k: losses[k] for k in again} == again  # the same batches (and patch subsets) after the resume


@pytest.mark.slow
def test_pretrain_script_runs_at_tiny_scale(corpus, tmp_path):
    """scripts/pretrain/pretrain_tiny.sh with the corpus, shrunk by pass-through flags, trains for 2 updates."""
    from test_scripts import run_script

    folder = os.path.dirname(corpus["vision_language"])
    result = run_script("pretrain/pretrain_tiny.sh", "--", *TINY, "--patch-image-size", "64", "--sample-patch-num",
                        "8", "--max-update", "2", "--num-workers", "0", cwd=tmp_path, DATA_DIR=folder,
                        SAVE_DIR=str(tmp_path / "ckpt"), BATCH_SIZE="4", USER_DIR=None)
    log = result.stdout + result.stderr
    assert re.search(r"loss_v1 [\d.]+ .*loss_v2 [\d.]+ .*num_updates 2\b", log), log[-3000:]
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").is_file(), log[-2000:]
