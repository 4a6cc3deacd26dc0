"""Turn the JSON lines of `bench_model.py` into the Markdown table used in BENCHMARKS.md.

Usage: python bench/table.py bench/results_cpu_YYYY-MM-DD.jsonl
"""
import json
import sys


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    for row in rows:
        if row["name"].startswith("gemm_ceiling"):
            print(f"GEMM ceiling {row['dtype']}: {row['gflops']} GFLOP/s")
    print("\n| measurement | config | median s | min–max s | GFLOP | GFLOP/s | % of GEMM ceiling |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if row["name"].startswith("gemm_ceiling"):
            continue
        print(f"| {row['name']} | {row['config']} | {row['median_s']:.3f} | {min(row['runs']):.3f}–{max(row['runs']):.3f} "
              f"| {row.get('gflop', '')} | {row.get('gflops', '')} | {row.get('pct_of_gemm_ceiling', '')} |")


if __name__ == "__main__":
    main(sys.argv[1])
