"""Crash-and-resume campaign (the long version of tests/test_crash_resume.py): SIGKILL `fairseq-train` at random
updates, optionally a random delay after the update's log line (so that kills land inside checkpoint writes),
resume, and compare with an uninterrupted run; then SIGKILL the data converters at random points and re-run.

Prints one JSON line per trial and a summary line per kind. Usage:

    OMP_NUM_THREADS=1 python bench/reliability_crash_resume.py [--seeds 5] [--max-delay 1.0] [--converter-trials 5]
        [--tasks vqa_gen,unify_task] [--workdir DIR]
"""
import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))

import biomedgpt  # noqa: E402,F401
import test_crash_resume as crash  # noqa: E402
from synthetic import image_b64, write_pretrain_sources, write_task_data  # noqa: E402


def emit(record):
    print(json.dumps(record, sort_keys=True), flush=True)


def pretrain_corpus(folder):
    """The corpus of tests/test_unify.py: four TSVs, image codes from a random-weight tiny VQ-GAN."""
    from test_image_codes import run_cli
    from test_vqgan import write_tiny_config

    sources = write_pretrain_sources(folder)
    image_tsv = os.path.join(folder, "image.tsv")
    assert run_cli({"config": write_tiny_config(folder)}, sources["images"], image_tsv, "--with-image") == 0
    sources["image"] = image_tsv
    return sources


# fairseq-train with the plugin's atomic checkpoint copy undone (stock fairseq's in-place copy), to measure the hazard
# (fairseq_cli.train first: it configures logging as `fairseq-train` does)
STOCK_COPY = ("import sys; from fairseq_cli.train import cli_main; import biomedgpt; "
              "from fairseq.file_io import PathManager; "
              "PathManager.copy = staticmethod(PathManager.copy.__wrapped__); sys.argv[0] = 'fairseq-train'; cli_main()")


def training_trial(task, make_command, total, reference_dir, reference_log, save_dir, seed, max_delay,
                   at_copy=False, stock_copy=False):
    rng = np.random.default_rng(seed)
    update = int(rng.integers(2, total))
    delay = float(rng.uniform(0, max_delay)) if max_delay > 0 else 0.0
    cmd = make_command(save_dir)
    if stock_copy:
        cmd = [sys.executable, "-c", STOCK_COPY, *cmd[3:]]
    record = {"kind": "train", "task": task, "seed": seed, "killed_after_update": update, "delay_s": round(delay, 3),
              "trigger": "first 'Finished saving checkpoint' line" if at_copy else "the update's log line",
              "checkpoint_copy": "stock fairseq (in place)" if stock_copy else "plugin (temp file + rename)"}
    started = time.time()
    try:
        killed = crash.run_and_kill(cmd, update, delay, then="Finished saving checkpoint" if at_copy else None)
        record["killed_during"] = crash.killed_during(killed)
        record["tmp_files_left"] = sorted(os.path.basename(p) for p in glob.glob(os.path.join(str(save_dir), "*tmp*")))
        try:
            left = crash.check_checkpoints_load(save_dir)
            record["checkpoints_left"], record["all_checkpoints_load"] = [os.path.basename(p) for p in left], True
        except Exception as exc:  # noqa: BLE001  (recorded, the campaign goes on)
            record["all_checkpoints_load"], record["load_error"] = False, f"{type(exc).__name__}: {exc}"[:300]
        resumed = crash.run(cmd)
        reference = crash.losses(reference_log)
        before, after = crash.losses(killed), crash.losses(resumed)
        record["resumed_from_update"] = min(after) - 1 if after else None
        record["losses_equal"] = (set(before) | set(after) == set(reference)
                                  and all(reference[u] == loss for part in (before, after) for u, loss in part.items()))
        try:
            crash.assert_bit_identical(crash.model_state(os.path.join(str(save_dir), "checkpoint_last.pt")),
                                       crash.model_state(os.path.join(str(reference_dir), "checkpoint_last.pt")))
            record["weights_bit_identical"] = True
        except AssertionError:
            record["weights_bit_identical"] = False
    except Exception as exc:  # noqa: BLE001
        record["error"] = f"{type(exc).__name__}: {exc}"[:500]
    record["ok"] = bool(record.get("all_checkpoints_load") and record.get("losses_equal")
                        and record.get("weights_bit_identical"))
    record["seconds"] = round(time.time() - started, 1)
    return record


def image_codes_trial(folder, reference, source, config, seed):
    rng = np.random.default_rng(seed)
    stop_at = int(rng.integers(1, 29))
    output = os.path.join(folder, f"codes{seed}.tsv")
    cmd = [sys.executable, "-m", "biomedgpt.cli.image_codes", "--input", source, "--output", output, "--vq-config",
           config, "--random-init", "--batch-size", "2", "--device", "cpu", "--quiet"]
    killed = crash.kill_when(cmd, lambda: crash.full_lines(output) >= stop_at)
    kept = crash.full_lines(output)
    crash.run(cmd)
    with open(output, "rb") as a, open(reference, "rb") as b:
        same = a.read() == b.read()
    return {"kind": "converter", "tool": "biomedgpt-image-codes", "seed": seed, "killed": killed,
            "rows_written_before_kill": kept, "rerun_byte_identical": same, "ok": same}


def prepare_trial(folder, root, reference_dir, seed):
    rng = np.random.default_rng(seed)
    min_bytes = int(rng.integers(1, 200_000))
    out = os.path.join(folder, f"prepare{seed}")
    cmd = [sys.executable, "-m", "biomedgpt.cli.prepare", "pretrain-images", "--root", root, "--out", out, "--quiet"]
    tmp_files = lambda: glob.glob(os.path.join(out, "*.tmp"))  # noqa: E731
    killed = crash.kill_when(cmd, lambda: any(os.path.getsize(p) >= min_bytes for p in tmp_files()))
    finals_after_kill = [p for p in glob.glob(os.path.join(out, "*")) if not p.endswith(".tmp")]
    crash.run(cmd)
    names = sorted(os.listdir(reference_dir))
    same = sorted(os.listdir(out)) == names and all(
        open(os.path.join(out, n), "rb").read() == open(os.path.join(reference_dir, n), "rb").read() for n in names)
    ok = same and (not killed or not finals_after_kill)
    return {"kind": "converter", "tool": "biomedgpt-prepare", "seed": seed, "killed": killed,
            "final_files_after_kill": len(finals_after_kill), "rerun_identical": same, "ok": ok}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="kill points per training task")
    parser.add_argument("--max-delay", type=float, default=1.0,
                        help="random delay after the trigger line (the update's, or with --at-copy the save's)")
    parser.add_argument("--converter-trials", type=int, default=5)
    parser.add_argument("--tasks", default="vqa_gen,unify_task")
    parser.add_argument("--at-copy", action="store_true",
                        help="kill right after fairseq logs 'Finished saving checkpoint' (inside the copy to "
                             "checkpoint_last.pt) instead of after the update line")
    parser.add_argument("--stock-copy", action="store_true",
                        help="undo the plugin's atomic checkpoint copy (measures stock fairseq)")
    parser.add_argument("--workdir", default=None, help="kept afterwards (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="reliability_crash_")
    records = []

    tasks = [t for t in args.tasks.split(",") if t]
    for task in tasks:
        folder = os.path.join(workdir, task)
        os.makedirs(folder, exist_ok=True)
        if task == "vqa_gen":
            data = write_task_data(folder, "vqa_gen", train=32, valid=4)
            make, total = (lambda d: crash.vqa_command(data, d)), crash.VQA_UPDATES
        else:
            corpus = pretrain_corpus(folder)
            make, total = (lambda d: crash.unify_command(corpus, d)), crash.UNIFY_UPDATES
        reference_dir = os.path.join(folder, "reference")
        reference_log = crash.run(make(reference_dir))
        for seed in range(100, 100 + args.seeds):
            record = training_trial(task, make, total, reference_dir, reference_log,
                                    os.path.join(folder, f"killed{seed}"), seed, args.max_delay, args.at_copy,
                                    args.stock_copy)
            records.append(record)
            emit(record)
            shutil.rmtree(os.path.join(folder, f"killed{seed}"), ignore_errors=True)  # ~1 GB of checkpoints
        shutil.rmtree(reference_dir, ignore_errors=True)

    if args.converter_trials:
        from PIL import Image
        from test_vqgan import write_tiny_config

        folder = os.path.join(workdir, "converters")
        os.makedirs(folder, exist_ok=True)
        config = write_tiny_config(folder)
        source = os.path.join(folder, "images.tsv")
        names = ["red", "green", "blue"]
        with open(source, "w") as handle:
            handle.writelines(f"img{i}\t{image_b64(names[i % 3], 40, seed=i)}\n" for i in range(30))
        reference = os.path.join(folder, "reference.tsv")
        crash.run([sys.executable, "-m", "biomedgpt.cli.image_codes", "--input", source, "--output", reference,
                   "--vq-config", config, "--random-init", "--batch-size", "2", "--device", "cpu", "--quiet"])
        root = os.path.join(folder, "raw")
        os.makedirs(root, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(80):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(os.path.join(root, f"s{i:03d}.png"))
        reference_dir = os.path.join(folder, "prepare_reference")
        crash.run([sys.executable, "-m", "biomedgpt.cli.prepare", "pretrain-images", "--root", root, "--out",
                   reference_dir, "--quiet"])
        for seed in range(args.converter_trials):
            for record in (image_codes_trial(folder, reference, source, config, seed),
                           prepare_trial(folder, root, reference_dir, seed)):
                records.append(record)
                emit(record)

    for key in sorted({(r["kind"], r.get("task") or r.get("tool")) for r in records}):
        group = [r for r in records if (r["kind"], r.get("task") or r.get("tool")) == key]
        summary = {"summary": True, "kind": key[0], "what": key[1], "trials": len(group),
                   "ok": sum(r["ok"] for r in group)}
        if key[0] == "train":
            for where in ("training", "checkpoint write", "checkpoint copy"):
                summary[f"killed during {where}"] = sum(r.get("killed_during") == where for r in group)
            summary["checkpoint_files_checked"] = sum(len(r.get("checkpoints_left", [])) for r in group)
        emit(summary)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
