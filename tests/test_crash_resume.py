"""Crash and resume: `fairseq-train` killed with SIGKILL at a random update, then restarted, ends with the same
weights (bit-exact, CPU fp32) and logs the same losses as a run that was never interrupted; every `checkpoint*.pt`
left by the kill loads. Also the data converters: `biomedgpt-image-codes` and `biomedgpt-prepare` killed mid-file
and re-run give the same bytes as an uninterrupted run, and leave no partial final file.

The update is read from the log stream: the process is killed as soon as the `num_updates=k` line of update `k`
appears (fairseq logs an update before it saves the checkpoint of that update, so the kill often lands in the
save). CI runs one kill point for vqa_gen (fine-tuning) and one for unify_task (pretraining)
(`BIOMEDGPT_CRASH_SEEDS=N`: N each); `bench/reliability_crash_resume.py` runs more seeds, random delays after the
line, kills inside the checkpoint copy, and the converters at random points.
"""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from synthetic import image_b64, write_task_data
from test_tasks_e2e import TINY
from test_unify import corpus  # noqa: F401  (the pretraining corpus fixture)

USER_DIR = os.path.dirname(__import__("biomedgpt").__file__)
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
COLOURS = '{"red": 0, "green": 1, "blue": 2}'
VQA_UPDATES = 8
UNIFY_UPDATES = 6
TRAIN_LINE = re.compile(r"\| train_inner \|.*? loss=([\d.]+),.*? num_updates=(\d+)")


def vqa_command(data, save_dir, seed=1):
    """Tiny vqa_gen fine-tuning: 32 rows, batch 8 (4 updates an epoch), dropout on, a checkpoint every 3 updates
    (mid-epoch; the last 2 kept) and checkpoint_last.pt at every epoch end (~210 MB each: Adam state of 59k
    embeddings)."""
    return [sys.executable, "-m", "fairseq_cli.train", data, "--user-dir", USER_DIR, "--task", "vqa_gen", *TINY,
            "--selected-cols", "0,5,2,3,4", "--ans2label-dict", COLOURS, "--prompt-type", "prev_output",
            "--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--dropout", "0.1",
            "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "8", "--cpu", "--max-update", str(VQA_UPDATES),
            "--save-dir", str(save_dir), "--save-interval-updates", "3", "--keep-interval-updates", "2",
            "--no-epoch-checkpoints", "--disable-validation", "--log-format", "simple", "--log-interval", "1",
            "--num-workers", "0", "--seed", str(seed)]


def unify_command(corpus, save_dir, seed=3):  # noqa: F811
    """Tiny pretraining on the four TSVs of tests/test_unify.py (6 updates an epoch, a checkpoint every 2)."""
    return [sys.executable, "-m", "fairseq_cli.train", corpus["vision_language"], "--user-dir", USER_DIR,
            "--task", "unify_task", *TINY, "--patch-image-size", "64", "--selected-cols", "0,1,2,3,4,5,6,7",
            "--text-data", corpus["text"], "--text-selected-cols", "0,1", "--image-data", corpus["image"],
            "--image-selected-cols", "0,1,2", "--detection-data", corpus["detection"], "--detection-selected-cols",
            "0,1,2", "--criterion", "adjust_label_smoothed_cross_entropy", "--sample-patch-num", "8",
            "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "4", "--cpu", "--max-update",
            str(UNIFY_UPDATES), "--save-dir", str(save_dir), "--disable-validation", "--log-format", "simple",
            "--log-interval", "1", "--save-interval-updates", "2", "--keep-interval-updates", "2",
            "--no-epoch-checkpoints", "--num-workers", "0", "--seed", str(seed)]


# ---------------------------------------------------------------------------------------------- helpers
def run(cmd, timeout=900):
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def run_and_kill(cmd, update: int, delay: float = 0.0, timeout: float = 900, then: str = None) -> str:
    """Start `cmd`; SIGKILL it `delay` seconds after the log line of update `update` (or, with `then`, after the
    first later line containing `then`). Returns everything it logged."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    lines, deadline, reached = [], time.time() + timeout, False
    try:
        for line in proc.stdout:
            lines.append(line)
            found = TRAIN_LINE.search(line)
            reached = reached or bool(found and int(found.group(2)) == update)
            if reached and (then is None or then in line):
                if delay:
                    time.sleep(delay)
                os.kill(proc.pid, signal.SIGKILL)
                lines.append(proc.stdout.read())  # what it printed before it died
                break
            assert time.time() < deadline, "".join(lines)[-3000:]
        else:
            raise AssertionError(f"the run ended before update {update}:\n" + "".join(lines)[-3000:])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return "".join(lines)


def killed_during(log: str) -> str:
    """Where the kill landed after the last logged update: "checkpoint write" (torch.save of the first name),
    "checkpoint copy" (copying it to checkpoint_last.pt etc.), or "training"."""
    tail = log[log.rfind("| train_inner |"):]
    if "Preparing to save checkpoint" not in tail or "Saved checkpoint" in tail:
        return "training"
    return "checkpoint copy" if "Finished saving checkpoint" in tail else "checkpoint write"


def losses(log: str):
    """num_updates -> the loss logged for that update (as printed)."""
    return {int(update): loss for loss, update in TRAIN_LINE.findall(log)}


def model_state(path):
    from fairseq import checkpoint_utils

    return checkpoint_utils.load_checkpoint_to_cpu(path)["model"]


def assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def check_checkpoints_load(save_dir):
    """Every checkpoint*.pt a kill left behind is complete (fairseq + the plugin write them atomically)."""
    from fairseq import checkpoint_utils

    found = sorted(glob.glob(os.path.join(str(save_dir), "checkpoint*.pt")))
    for path in found:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
        assert "model" in state and state["optimizer_history"], path
    return found


# ---------------------------------------------------------------------------------------------- training runs
# kill points drawn from these seeds (CI: one per task; BIOMEDGPT_CRASH_SEEDS=N runs N per task)
_EXTRA = int(os.environ.get("BIOMEDGPT_CRASH_SEEDS", "1"))
VQA_SEEDS = tuple(range(11, 11 + _EXTRA))
UNIFY_SEEDS = tuple(range(21, 21 + _EXTRA))


@pytest.fixture(scope="module")
def training(tmp_path_factory, corpus):  # noqa: F811
    """All runs of this module, two at a time (each is one single-threaded process): the uninterrupted
    reference of each task, and one kill + resume per seed. Yields {(task, seed): outcome or exception}; the
    checkpoints (GBs) are deleted afterwards."""
    import concurrent.futures

    folder = tmp_path_factory.mktemp("crash")
    os.makedirs(folder / "vqa")
    data = write_task_data(str(folder / "vqa"), "vqa_gen", train=32, valid=4)
    commands = {"vqa_gen": lambda save_dir: vqa_command(data, save_dir),
                "unify_task": lambda save_dir: unify_command(corpus, save_dir)}
    total = {"vqa_gen": VQA_UPDATES, "unify_task": UNIFY_UPDATES}
    references = {task: concurrent.futures.Future() for task in commands}

    def reference(task):
        try:
            references[task].set_result(run(commands[task](folder / task / "reference")))
        except BaseException as exc:  # the kill runs still run; their comparison reports this
            references[task].set_exception(exc)

    def crash(task, seed):
        update = int(np.random.default_rng(seed).integers(2, total[task]))  # 2 .. total - 1
        save_dir = folder / task / f"killed{seed}"
        cmd = commands[task](save_dir)
        killed = run_and_kill(cmd, update)
        left = check_checkpoints_load(save_dir)
        resumed = run(cmd)
        return {"update": update, "killed": killed, "left": left, "resumed": resumed, "save_dir": save_dir}

    jobs = [("reference", task) for task in commands] + [(seed, "vqa_gen") for seed in VQA_SEEDS] + \
        [(seed, "unify_task") for seed in UNIFY_SEEDS]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {(task, key): pool.submit(reference, task) if key == "reference" else pool.submit(crash, task, key)
                   for key, task in jobs}
    outcomes = {}
    for (task, key), future in futures.items():
        if key == "reference":
            continue
        try:
            outcomes[(task, key)] = dict(future.result(), reference_log=references[task].result(),
                                         reference_dir=folder / task / "reference", total=total[task])
        except BaseException as exc:
            outcomes[(task, key)] = exc
    yield outcomes
    shutil.rmtree(folder, ignore_errors=True)


def check_resume(outcome):
    """The killed run's and the resumed run's losses are the uninterrupted run's; the final weights are its."""
    if isinstance(outcome, BaseException):
        raise outcome
    update, total = outcome["update"], outcome["total"]
    reference = losses(outcome["reference_log"])
    assert sorted(reference) == list(range(1, total + 1))
    before, after = losses(outcome["killed"]), losses(outcome["resumed"])
    assert max(before) >= update and set(before) | set(after) == set(reference)
    for where, logged in (("before the kill", before), ("after the resume", after)):
        for u, loss in logged.items():
            assert loss == reference[u], f"update {u} {where}: {loss} vs {reference[u]}"
    if outcome["left"]:
        found = re.search(r"Loaded checkpoint \S+checkpoint_last\.pt \(epoch \d+ @ (\d+) updates\)", outcome["resumed"])
        assert found and min(after) == int(found.group(1)) + 1, outcome["resumed"][-3000:]
    else:
        assert min(after) == 1
    assert_bit_identical(model_state(os.path.join(str(outcome["save_dir"]), "checkpoint_last.pt")),
                         model_state(os.path.join(str(outcome["reference_dir"]), "checkpoint_last.pt")))


@pytest.mark.slow
@pytest.mark.parametrize("seed", VQA_SEEDS)
def test_vqa_gen_killed_at_a_random_update_resumes_bit_exact(training, seed):
    check_resume(training[("vqa_gen", seed)])


@pytest.mark.slow
@pytest.mark.parametrize("seed", UNIFY_SEEDS)
def test_unify_task_killed_at_a_random_update_resumes_bit_exact(training, seed):
    check_resume(training[("unify_task", seed)])


# ---------------------------------------------------------------------------------------------- atomic copies
def test_checkpoint_copy_interrupted_midway_leaves_the_old_file(tmp_path, monkeypatch):
    """fairseq copies checkpoint_N_M.pt to checkpoint_last.pt; a crash inside that copy must not truncate it."""
    import shutil

    import biomedgpt  # noqa: F401  (applies the atomic copy)
    from fairseq.file_io import PathManager

    source, last = tmp_path / "checkpoint_1_3.pt", tmp_path / "checkpoint_last.pt"
    source.write_bytes(b"new" * 100000)
    last.write_bytes(b"old complete checkpoint")

    def crash_midway(src, dst, *args, **kwargs):
        with open(src, "rb") as reader, open(dst, "wb") as writer:
            writer.write(reader.read(1000))
        raise KeyboardInterrupt("killed in the middle of the copy")

    monkeypatch.setattr(shutil, "copyfile", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        PathManager.copy(str(source), str(last), overwrite=True)
    assert last.read_bytes() == b"old complete checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1_3.pt", "checkpoint_last.pt"]
    monkeypatch.undo()
    assert PathManager.copy(str(source), str(last), overwrite=True)
    assert last.read_bytes() == source.read_bytes()


# ---------------------------------------------------------------------------------------------- converters
def kill_when(cmd, ready, timeout=300):
    """Start `cmd`, SIGKILL it once `ready()` is true (polled). Returns False if it finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    deadline = time.time() + timeout
    try:
        while proc.poll() is None:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            assert time.time() < deadline
            time.sleep(0.005)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def full_lines(path) -> int:
    try:
        with open(path, "rb") as handle:
            return handle.read().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_image_codes_killed_mid_file_then_rerun_is_byte_identical(tmp_path):
    from test_vqgan import write_tiny_config

    config = write_tiny_config(tmp_path)
    source = tmp_path / "images.tsv"
    names = ["red", "green", "blue"]
    source.write_text("".join(f"img{i}\t{image_b64(names[i % 3], 40, seed=i)}\n" for i in range(30)))

    def command(output):
        return [sys.executable, "-m", "biomedgpt.cli.image_codes", "--input", str(source), "--output", str(output),
                "--vq-config", config, "--random-init", "--batch-size", "2", "--device", "cpu", "--quiet"]

    from biomedgpt.cli.image_codes import main as image_codes

    reference = tmp_path / "reference.tsv"
    assert image_codes(command(reference)[3:]) == 0  # the uninterrupted run, in this process
    expected = reference.read_bytes()
    assert expected.count(b"\n") == 30
    output = tmp_path / "killed.tsv"
    assert kill_when(command(output), lambda: full_lines(output) >= 3), "finished before the kill"
    partial = output.read_bytes()
    assert 0 < full_lines(output) < 30 and expected.startswith(partial[: partial.rfind(b"\n") + 1])
    run(command(output))
    assert output.read_bytes() == expected


@pytest.mark.slow
def test_prepare_killed_mid_run_leaves_no_final_file_and_rerun_is_identical(tmp_path):
    from PIL import Image

    root = tmp_path / "raw"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(80):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / f"scan{i:03d}.png")

    def command(out):
        return [sys.executable, "-m", "biomedgpt.cli.prepare", "pretrain-images", "--root", str(root), "--out",
                str(out), "--quiet"]

    from biomedgpt.cli.prepare import main as prepare

    assert prepare(command(tmp_path / "reference")[3:]) == 0  # the uninterrupted run, in this process
    finals = sorted(p.name for p in (tmp_path / "reference").iterdir())
    assert finals and not [name for name in finals if name.endswith(".tmp")]
    out = tmp_path / "killed"
    tmp_files = lambda: glob.glob(str(out / "*.tmp"))  # noqa: E731
    assert kill_when(command(out), lambda: any(os.path.getsize(p) > 0 for p in tmp_files())), \
        "finished before the kill"
    assert tmp_files() and not [p for p in out.iterdir() if not p.name.endswith(".tmp")]  # only partial .tmp files
    run(command(out))
    assert sorted(p.name for p in out.iterdir()) == finals
    for name in finals:
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
