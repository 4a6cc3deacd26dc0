"""Micro-benchmark: the tied 59,457 x D output projection as `F.linear(x, W)` vs `(W @ x^T)^T` on the CPU.

Prints one JSON line per row count (median ms of both forms and their max difference). Usage:

    OMP_NUM_THREADS=2 python bench/bench_output_projection.py [--threads 2] [--dim 256]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def median_ms(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=59457)
    parser.add_argument("--runs", type=int, default=15)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    weight = torch.randn(opts.vocab, opts.dim)
    for rows in (1, 2, 5, 8, 12, 16, 40, 160):
        x = torch.randn(rows, opts.dim)
        linear = median_ms(lambda: F.linear(x, weight), opts.runs)
        streamed = median_ms(lambda: torch.matmul(weight, x.t()).t().contiguous(), opts.runs)
        diff = (F.linear(x, weight) - torch.matmul(weight, x.t()).t()).abs().max().item()
        print(json.dumps({"name": "output_projection", "rows": rows, "dim": opts.dim, "vocab": opts.vocab,
                          "threads": opts.threads, "f_linear_ms": round(linear, 2),
                          "row_streamed_ms": round(streamed, 2), "max_abs_diff": diff}), flush=True)


if __name__ == "__main__":
    main()
