"""Probe a demo training recipe: `fairseq-train` with the demo's flags (plus overrides) on easy-VQA TSVs that
`biomedgpt-demo` wrote, printing one JSON line per validation: updates, seconds, vqa_score.

    OMP_NUM_THREADS=1 python bench/demo_recipe_probe.py --data runs/easy_vqa/data --train balanced \
        --valid valid_open --updates 600 --every 150 -- --lr 5e-4 --batch-size 64

`--valid valid_open` (the default) validates on the colour/shape questions of the whole validation split (207
questions), which only a model that looks at the image can answer; `--valid valid_all` on the whole validation
split (781 questions), `--valid valid_yesno` on its yes/no questions (574). They are written on first use,
and so is `--train balanced` (the training split's `balanced_questions`). A pre-trained trunk
(bench/demo_trunk_probe.py) is given as `-- --resnet-model-path trunk.pt`.

Flags after `--` replace the demo's values for the same flag (or are added). Used to choose the demo's recipe
(BENCHMARKS.md, "The demo recipe").
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from biomedgpt.cli.demo import ARCH_FLAGS, DEFAULT_LR, RECIPE_FLAGS, RECIPES
from biomedgpt.demo.easy_vqa_data import (SELECTED_COLS, balanced_questions, easy_vqa_questions, open_questions,
                                          question_kind, split_train, write_tsv)
from biomedgpt.userdir import USER_DIR


def merge(flags, overrides):
    """`flags` with each `--name value` in `overrides` replacing the same flag (flags without value appended)."""
    out, i = list(flags), 0
    while i < len(overrides):
        name = overrides[i]
        value = overrides[i + 1] if i + 1 < len(overrides) and not overrides[i + 1].startswith("--") else None
        if name in out:
            at = out.index(name)
            if value is not None and at + 1 < len(out) and not out[at + 1].startswith("--"):
                out[at + 1] = value
        else:
            out += [name] + ([value] if value is not None else [])
        i += 2 if value is not None else 1
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the demo's data folder (TSVs, ans2label.json)")
    parser.add_argument("--train", default="balanced")
    parser.add_argument("--valid", default="valid_open")
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--every", type=int, default=150, help="validate every N updates")
    parser.add_argument("--label", default="")
    opts, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    data = os.path.abspath(opts.data)
    vocab = os.path.join(os.path.dirname(data), "vocab")
    splits = {"valid_open": open_questions, "valid_all": list,
              "valid_yesno": lambda qs: [q for q in qs if question_kind(q) == "yes/no"]}
    missing = lambda name: not os.path.isfile(f"{data}/{name}.tsv")  # noqa: E731
    if (opts.train == "balanced" and missing("balanced")) or (opts.valid in splits and missing(opts.valid)):
        train, valid = split_train(easy_vqa_questions()[0])
        if opts.train == "balanced" and missing("balanced"):
            write_tsv(f"{data}/balanced.tsv", balanced_questions(train, seed=1))
        if opts.valid in splits and missing(opts.valid):
            write_tsv(f"{data}/{opts.valid}.tsv", splits[opts.valid](valid))
    with tempfile.TemporaryDirectory() as save_dir:
        recipe = RECIPES["default"]
        defaults = ["--cpu", "--bf16", "--lr", str(DEFAULT_LR), "--batch-size", str(recipe.batch_size),
                    "--patch-image-size", str(recipe.image_size), "--seed", "1", "--batch-size-valid", "64",
                    "--num-workers", "1"]
        flags = merge([*ARCH_FLAGS, *RECIPE_FLAGS, *defaults], overrides)
        cmd = [sys.executable, "-m", "fairseq_cli.train", f"{data}/{opts.train}.tsv,{data}/{opts.valid}.tsv",
               "--user-dir", USER_DIR, "--task", "vqa_gen", "--bpe-dir", vocab, "--selected-cols",
               SELECTED_COLS, "--ans2label-file", f"{data}/ans2label.json", *flags,
               "--max-update", str(opts.updates), "--validate-interval-updates", str(opts.every),
               "--save-interval-updates", str(10 ** 9), "--no-save", "--save-dir", save_dir,
               "--log-format", "simple", "--log-interval", "20"]
        started = time.time()
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=dict(os.environ, PYTHONWARNINGS="ignore"))
        tail = []
        for line in process.stdout:
            tail = (tail + [line])[-30:]
            found = re.search(r"valid on 'valid' subset \|.*? vqa_score ([\d.]+) .*?\| num_updates (\d+)", line)
            if found:
                print(json.dumps({"label": opts.label, "updates": int(found.group(2)),
                                  "seconds": round(time.time() - started, 1),
                                  "vqa_score": float(found.group(1)), "flags": overrides}), flush=True)
        if process.wait() != 0:
            sys.stderr.write("".join(tail))
            raise SystemExit(process.returncode)


if __name__ == "__main__":
    main()
