"""Every fine-tuning task through stock `fairseq-train` (subprocess, CPU, tiny model, synthetic TSVs):
a few updates with validation and the task metric in the log, a save, and a resume that continues."""
import os
import re
import subprocess
import sys

import pytest

from synthetic import write_task_data

TINY = ["--arch", "ofa_tiny", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "64",
        "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
        "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--patch-image-size", "32"]
COLOURS = '{"red": 0, "green": 1, "blue": 2}'
TASKS = {
    # task: (extra flags, validation metric, best-checkpoint metric direction)
    "vqa_gen": (["--selected-cols", "0,5,2,3,4", "--ans2label-dict", COLOURS, "--prompt-type", "prev_output",
                 "--add-object"], "vqa_score"),
    "image_classify": (["--selected-cols", "0,2", "--ans2label-dict", COLOURS], "score"),
    "mnli": (["--selected-cols", "0,1,2", "--prompt-type", "src"], "acc"),
    "caption": (["--selected-cols", "0,4,2", "--eval-cider", "--eval-args", '{"beam": 2, "max_len_b": 6}'], "cider"),
    "gigaword": (["--selected-cols", "0,1", "--eval-rouge", "--eval-args", '{"beam": 2, "max_len_b": 8}',
                  "--noise-ratio", "0.1"], "rougeL_f1"),
    "snli_ve": (["--selected-cols", "0,1,2,3,4", "--prompt-type", "prev_output"], "snli_score"),
    "refcoco": (["--selected-cols", "0,1,2,3", "--eval-acc", "--eval-args", '{"beam": 2}'], "score"),
}


def run_fairseq_train(args):
    """`fairseq-train ARGS --user-dir <plugin>` in a subprocess (1 thread); returns the log, asserting success."""
    cmd = [sys.executable, "-m", "fairseq_cli.train", *args, "--user-dir",
           os.path.dirname(__import__("biomedgpt").__file__)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def fairseq_train(data, task, save_dir, max_update, extra=(), lr="1e-3"):
    flags, metric = TASKS[task]
    return run_fairseq_train([
        data, "--task", task, *TINY, *flags, "--criterion", "adjust_label_smoothed_cross_entropy",
        "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", lr, "--batch-size", "8", "--cpu",
        *(["--max-update", str(max_update)] if max_update else []), "--save-dir", str(save_dir), "--log-format", "simple",
        "--log-interval", "1", "--validate-interval-updates", "3", "--save-interval-updates", "3",
        "--best-checkpoint-metric", metric, "--maximize-best-checkpoint-metric", "--num-workers", "0", *extra])


def train_losses(log):
    return [float(x) for x in re.findall(r"\| train_inner \|.*? loss=([\d.]+)", log)]


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_train_validate_save_resume(task, tmp_path):
    data = write_task_data(str(tmp_path), task)
    save_dir = tmp_path / "ckpt"
    log = fairseq_train(data, task, save_dir, max_update=3)
    metric = TASKS[task][1]
    assert re.search(rf"valid on 'valid' subset \|.* {metric} [\d.]+", log), log[-3000:]
    assert (save_dir / "checkpoint_last.pt").exists()
    log = fairseq_train(data, task, save_dir, max_update=5)
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 3 updates\)", log), log[-3000:]
    assert "num_updates=4" in log and "num_updates=5" in log and "num_updates=1," not in log


@pytest.mark.slow
@pytest.mark.parametrize("task", ["vqa_gen", "mnli", "gigaword"])
def test_loss_decreases_on_learnable_toy_task(task, tmp_path):
    data = write_task_data(str(tmp_path), task, train=48)
    losses = train_losses(fairseq_train(data, task, tmp_path / "ckpt", max_update=24, lr="2e-3",
                                        extra=["--validate-interval-updates", "100", "--disable-validation"]))
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, losses


@pytest.mark.slow
def test_vqa_beam_search_validation_with_ema(tmp_path):
    data = write_task_data(str(tmp_path), "vqa_gen")
    log = fairseq_train(data, "vqa_gen", tmp_path / "ckpt", max_update=3, extra=[
        "--val-inference-type", "beamsearch", "--eval-args", '{"beam": 2, "unnormalized": true}', "--uses-ema",
        "--store-ema", "--ema-fp32", "--ema-decay", "0.9", "--ema-start-update", "0"])
    assert re.search(r"valid on 'valid' subset \|.* vqa_score [\d.]+", log), log[-3000:]


@pytest.mark.slow
def test_reference_schedule_flags_derive_total_updates_from_max_epoch(tmp_path):
    """BiomedGPT scripts give `--warmup-ratio` and `--max-epoch` but no `--max-update`."""
    data = write_task_data(str(tmp_path), "mnli", train=16)
    log = fairseq_train(data, "mnli", tmp_path / "ckpt", max_update=None, extra=[
        "--lr-scheduler", "polynomial_decay_ratio", "--warmup-ratio", "0.25", "--max-epoch", "2"])
    lrs = [float(x) for x in re.findall(r"\| train_inner \|.*? lr=([\d.e-]+)", log)]
    # 2 batches per epoch x 2 epochs = 4 updates, warmup int(4 * 0.25) = 1: lr 1e-3, then linear decay to 0
    assert lrs == pytest.approx([1e-3, 2 / 3 * 1e-3, 1 / 3 * 1e-3, 0.0], abs=1e-9), log[-2000:]


@pytest.mark.slow
def test_from_scratch_with_a_sentencepiece_vocabulary(tmp_path):
    """`biomedgpt-train-spm` on the training TSV, then `--bpe-dir` with spm.model + dict.txt (no GPT-2 files)."""
    from biomedgpt.cli.train_spm import main as train_spm

    data = write_task_data(str(tmp_path), "vqa_gen")
    spm_dir = tmp_path / "spm"
    assert train_spm(["--input", data.split(",")[0], "--tsv-cols", "2,3", "--vocab-size", "28",
                      "--output-dir", str(spm_dir), "--lowercase"]) == 0
    log = fairseq_train(data, "vqa_gen", tmp_path / "ckpt", max_update=3, extra=["--bpe-dir", str(spm_dir)])
    assert re.search(r"OFA dictionary: (\d+) symbols", log) and "59457" not in re.search(
        r"OFA dictionary: (\d+) symbols", log).group(1)
    assert re.search(r"valid on 'valid' subset \|.* vqa_score [\d.]+", log), log[-3000:]


@pytest.mark.slow
def test_training_files_rotate_by_epoch_and_workers_read_by_index(tmp_path):
    """`DATA=a.tsv,b.tsv,valid.tsv`: epoch 1 reads a.tsv, epoch 2 b.tsv; two DataLoader workers per split."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_task_data(str(tmp_path / "a"), "mnli", train=8)
    second = write_task_data(str(tmp_path / "b"), "mnli", train=16)
    data = ",".join([first.split(",")[0], second.split(",")[0], first.split(",")[1]])
    log = fairseq_train(data, "mnli", tmp_path / "ckpt", max_update=None, extra=[
        "--max-epoch", "2", "--num-workers", "2", "--validate-interval-updates", "0"])
    loads = re.findall(r"train: (\d+) rows from (\S+)", log)
    order = [(rows, os.path.basename(os.path.dirname(path))) for rows, path in loads]
    assert order[:3] == [("8", "a"), ("16", "b"), ("8", "a")][: len(order)] and len(order) >= 2  # a, b, a, ...
    assert "epoch 002" in log and "num_updates=3" in log  # 1 batch in epoch 1, 2 batches in epoch 2


@pytest.mark.slow
def test_vqa_unconstrained_training_with_open_answers(tmp_path):
    """`--unconstrained-training`: no answer set, answers outside any list are fine, beam-search validation."""
    data = write_task_data(str(tmp_path), "vqa_gen")
    log = fairseq_train(data, "vqa_gen", tmp_path / "ckpt", max_update=3, extra=[
        "--unconstrained-training", "--val-inference-type", "beamsearch", "--ans2label-dict", '{"purple": 0}',
        "--eval-args", '{"beam": 2, "max_len_b": 4}'])
    assert re.search(r"valid on 'valid' subset \|.* vqa_score [\d.]+", log), log[-3000:]
