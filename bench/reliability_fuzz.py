"""Fuzzing campaign (the long version of tests/test_fuzz_data.py): fresh random hypothesis examples (default 300
per test, i.e. per task dataset, IndexedTSV, the unify_task extra files and decode_image), then the counts the
tests kept. Prints one JSON line per area (files, rows, DataErrors, rows the independent oracle calls bad,
mutations and image kinds drawn) and a last line with pytest's outcome.

    OMP_NUM_THREADS=1 python bench/reliability_fuzz.py [--examples 300] [-k vqa_gen]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("-k", default=None, help="pytest -k expression (a subset of the tests)")
    args = parser.parse_args(argv)
    stats = os.path.join(tempfile.mkdtemp(prefix="reliability_fuzz_"), "stats.json")
    env = dict(os.environ, BIOMEDGPT_FUZZ_LONG="1", BIOMEDGPT_FUZZ_EXAMPLES=str(args.examples),
               BIOMEDGPT_FUZZ_STATS=stats, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.join("tests", "test_fuzz_data.py")]
    if args.k:
        cmd += ["-k", args.k]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if os.path.exists(stats):
        with open(stats) as handle:
            for area, counts in sorted(json.load(handle).items()):
                print(json.dumps({"area": area, **counts}, sort_keys=True), flush=True)
    summary = re.findall(r"^(?:FAILED|ERROR) .*$|^\d+ (?:passed|failed).*$", result.stdout, re.M)
    print(json.dumps({"pytest_exit_code": result.returncode, "examples_per_test": args.examples,
                      "outcome": summary}), flush=True)
    if result.returncode:
        sys.stderr.write(result.stdout[-6000:])
    shutil.rmtree(os.path.dirname(stats), ignore_errors=True)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
