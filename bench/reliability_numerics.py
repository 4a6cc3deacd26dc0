"""Numerics campaign (the long version of tests/test_numerics.py): the tiny model on the toy MedNLI-like task,
fp32 twice and `--bf16` once per seed, for `--updates` updates on CPU. Prints one JSON line per seed: the loss
curves' start / end, the means of the first 50 and last 20 losses of each, the relative bf16 - fp32 gap of the last
20, the largest per-update difference, whether every bf16 loss and weight is finite, and whether the two fp32 runs
are bit-identical (losses and checkpoint).

    OMP_NUM_THREADS=1 python bench/reliability_numerics.py [--updates 400] [--seeds 1,2]
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))

import biomedgpt  # noqa: E402,F401
import test_numerics as numerics  # noqa: E402
from synthetic import write_task_data  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=400)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    from fairseq import checkpoint_utils

    folder = args.workdir or tempfile.mkdtemp(prefix="reliability_numerics_")
    data = write_task_data(folder, "mnli", train=48, valid=6)
    bpe_dir = numerics.small_bpe_dir(folder)
    ok = True
    for seed in [int(s) for s in args.seeds.split(",")]:
        runs = {"fp32": [], "fp32_again": [], "bf16": ["--bf16"]}
        commands = [numerics.train_command(data, bpe_dir, os.path.join(folder, f"{name}_{seed}"), args.updates,
                                           *extra, seed=seed) for name, extra in runs.items()]
        logs = dict(zip(runs, numerics.run_all(commands)))
        curves = {name: numerics.curve(log, args.updates) for name, log in logs.items()}
        states = {name: checkpoint_utils.load_checkpoint_to_cpu(os.path.join(folder, f"{name}_{seed}",
                                                                             "checkpoint_last.pt"))["model"]
                  for name in runs}
        for name in runs:
            shutil.rmtree(os.path.join(folder, f"{name}_{seed}"), ignore_errors=True)
        last = {name: sum(c[-numerics.LAST:]) / numerics.LAST for name, c in curves.items()}
        gap = abs(last["bf16"] - last["fp32"]) / last["fp32"]
        identical = curves["fp32"] == curves["fp32_again"] and all(
            torch.equal(states["fp32"][k], states["fp32_again"][k]) for k in states["fp32"])
        finite = all(math.isfinite(x) for x in curves["bf16"]) and all(
            torch.isfinite(t).all() for t in states["bf16"].values() if t.is_floating_point())
        record = {"seed": seed, "updates": args.updates, "first_loss": {n: c[0] for n, c in curves.items()},
                  "final_loss": {n: c[-1] for n, c in curves.items()},
                  f"mean_last_{numerics.LAST}": {n: round(v, 4) for n, v in last.items()},
                  "bf16_vs_fp32_relative_gap": round(gap, 4), "tolerance": numerics.TOLERANCE,
                  "bf16_all_finite": finite, "fp32_runs_bit_identical": identical,
                  "mean_first_50": {n: round(sum(c[:50]) / 50, 4) for n, c in curves.items()},
                  "max_abs_loss_diff_bf16_fp32": round(max(abs(a - b) for a, b in zip(curves["bf16"],
                                                                                       curves["fp32"])), 4),
                  "updates_where_bf16_loss_differs": sum(a != b for a, b in zip(curves["bf16"], curves["fp32"])),
                  "bf16_curve_differs_from_fp32": curves["bf16"] != curves["fp32"]}
        record["ok"] = bool(finite and identical and gap <= numerics.TOLERANCE)
        ok = ok and record["ok"]
        print(json.dumps(record, sort_keys=True), flush=True)
    if not args.workdir:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
