"""Pretraining throughput: `fairseq-train --task unify_task` with the real `ofa_tiny` on a synthetic corpus.

Writes a small corpus in the four pretraining layouts (vision-language rows cycling caption / qa /
visual_grounding, text rows, an image-code TSV with random codes, detection rows; see tests/synthetic.py for
the generators it reuses), runs stock `fairseq-train` for `--updates` updates (`--warmup` of them untimed) and
reads fairseq's own `train_inner` timing lines. Prints one JSON line: image-text samples/s (the `--batch-size`
rows of each step; extra samples ride along every 8th row), updates/s, threads, machine load.

    OMP_NUM_THREADS=2 python bench/bench_pretrain.py --threads 2 [--updates 30] [--patch 256] [--batch 8]
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from synthetic import write_pretrain_sources  # noqa: E402


def write_corpus(folder: str, rows: int) -> dict:
    sources = write_pretrain_sources(folder, rows)
    rng = np.random.default_rng(0)
    image_tsv = os.path.join(folder, "image.tsv")
    with open(sources["images"]) as src, open(image_tsv, "w") as out:
        for line in src:
            image_id, b64 = line.rstrip("\n").split("\t")[:2]
            out.write(f"{image_id}\t{b64}\t{' '.join(str(c) for c in rng.integers(0, 8192, 256))}\n")
    sources["image"] = image_tsv
    return sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10, help="first updates not timed")
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--extra", nargs="*", default=[], help="more fairseq-train flags, e.g. --bf16")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        corpus = write_corpus(folder, rows=64)
        import biomedgpt

        cmd = [sys.executable, "-m", "fairseq_cli.train", corpus["vision_language"], "--user-dir",
               os.path.dirname(biomedgpt.__file__), "--task", "unify_task", "--arch", "ofa_tiny",
               "--selected-cols", "0,1,2,3,4,5,6,7", "--text-data", corpus["text"], "--image-data", corpus["image"],
               "--detection-data", corpus["detection"], "--patch-image-size", str(opts.patch),
               "--criterion", "adjust_label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "5e-5",
               "--batch-size", str(opts.batch), "--max-update", str(opts.updates), "--disable-validation",
               "--no-save", "--log-format", "simple", "--log-interval", "1", "--num-workers", "1", "--cpu",
               "--save-dir", os.path.join(folder, "ckpt"), *opts.extra]
        env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads), PYTHONWARNINGS="ignore")
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        log = result.stdout + result.stderr
        if result.returncode != 0:
            raise SystemExit(log[-3000:])
    walls = [int(w) for w in re.findall(r"\| train_inner \|.*? train_wall=(\d+)", log)]
    ups = [float(u) for u in re.findall(r"\| train_inner \|.*? ups=([\d.]+)", log)][opts.warmup:]
    median_ups = statistics.median(ups)
    print(json.dumps({
        "name": "pretrain_unify_task", "arch": "ofa_tiny", "patch": opts.patch, "batch": opts.batch,
        "extra": opts.extra, "device": "cpu", "threads": opts.threads, "timed_updates": len(ups),
        "updates_per_s": median_ups, "samples_per_s": round(median_ups * opts.batch, 2),
        "train_wall_s": walls[-1] if walls else None, "load_avg": os.getloadavg(),
        "machine": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()
