"""`biomedgpt-demo`: BiomedGPT (`ofa_tiny`) learns easy-VQA end to end with the stock fairseq commands.

    biomedgpt-demo                      # ~13 min on a 2-core CPU (GPU used when present)
    biomedgpt-demo --full               # ~48 min, 97.7 % on all test questions (BENCHMARKS.md)
    biomedgpt-demo --out runs/demo --fresh

Stages: easy-VQA -> TSVs; a SentencePiece vocabulary trained on the questions and answers; the ResNet trunk
pre-trained to name the colour and the shape of the training images (OFA starts from an ImageNet-trained trunk,
`--resnet-model-path`; the demo has neither network nor ImageNet, so it makes its own start the same way);
`fairseq-train` (from scratch with that trunk held fixed, or `--restore-file CKPT`), optionally after a warm-up
on the questions the text alone cannot answer (`--warmup-updates`); `fairseq-generate` with trie-constrained
beam search and `fairseq-validate` on held-out test questions; a report with the accuracy next to the majority
answer and the question-only prior, sample answers and where the checkpoint, logs and the training-curve PNG are.
Recipe (BENCHMARKS.md, "The demo recipe", parts 1-3): 32-px images, Adam 3e-4, bf16 weights with fp32 master
copies on the CPU (fairseq `--bf16`); the pre-trained trunk kept fixed (`--freeze-resnet
--freeze-resnet-weights`: trained on, it forgets the shapes under the yes/no questions' gradients); no decoder
prompt (`--prompt-type none`: the decoder reads the question through the encoder only, so an update costs half
and evaluation a third of what `prev_output` costs, at the same accuracy per update).
Everything goes under `--out`; re-running resumes (finished stages are skipped, training continues from
`checkpoint_last.pt`), `--fresh` starts clean.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import List, NamedTuple, Optional


class Recipe(NamedTuple):
    image_size: int  # --patch-image-size
    trunk_updates: int  # ResNet trunk pre-training on the training images' colour and shape (0: none)
    warmup_updates: int  # fairseq-train on `balanced_questions` (0: none)
    updates: int  # fairseq-train on all questions
    batch_size: int
    test_questions: Optional[int]  # None: all 9,673
    valid_questions: int
    validate_every: int


RECIPES = {
    "default": Recipe(32, 600, 0, 1200, 32, 1000, 300, 400),
    "full": Recipe(32, 1200, 0, 5000, 32, None, 800, 1000),
}
DEFAULT_LR = 3e-4  # Adam; at 1e-3 the randomly initialised model cannot even memorise 64 samples
VOCAB_SIZE = 128  # an upper bound: easy-VQA's text has fewer distinct pieces
ARCH_FLAGS = [
    "--arch", "ofa_tiny", "--encoder-normalize-before", "--decoder-normalize-before",
    "--share-decoder-input-output-embed", "--share-all-embeddings", "--layernorm-embedding",
    "--patch-layernorm-embedding", "--code-layernorm-embedding", "--add-type-embedding", "--scale-attn",
    "--scale-fc", "--scale-heads", "--disable-entangle",
]
RECIPE_FLAGS = [
    "--max-src-length", "32", "--max-tgt-length", "4", "--prompt-type", "none",
    "--dropout", "0.0", "--attention-dropout", "0.0", "--resnet-drop-path-rate", "0.0",
    "--encoder-drop-path-rate", "0.0", "--decoder-drop-path-rate", "0.0",
    "--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing", "0.0",
    "--optimizer", "adam", "--adam-betas", "(0.9,0.999)", "--adam-eps", "1e-08", "--weight-decay", "0.01",
    "--clip-norm", "1.0", "--lr-scheduler", "polynomial_decay_ratio", "--warmup-ratio", "0.05",
]


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run(cmd: List[str], log_path: str, threads: int) -> str:
    """Run `cmd`, echoing its output and writing it to `log_path`; returns the output."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    lines = []
    with open(log_path, "a", encoding="utf-8") as log, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process:
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
            lines.append(line)
    if process.returncode != 0:
        raise SystemExit(f"biomedgpt-demo: command failed (exit {process.returncode}); log: {log_path}")
    return "".join(lines)


def fairseq(tool: str) -> List[str]:
    return [sys.executable, "-m", f"fairseq_cli.{tool}"]


def parse_curve(log: str):
    losses = [(int(u), float(loss)) for loss, u in
              re.findall(r"\| train_inner \|.*? loss=([\d.]+),.*? num_updates=(\d+)", log)]
    scores = [(int(u), float(score)) for score, u in
              re.findall(r"\| valid on 'valid' subset \|.*? vqa_score ([\d.]+) .*?\| num_updates (\d+)", log)]
    return losses, scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", default="runs/easy_vqa", help="folder for everything the demo writes")
    parser.add_argument("--fresh", action="store_true", help="delete --out first instead of resuming")
    parser.add_argument("--full", action="store_true", help="the longer recipe on the full test set")
    parser.add_argument("--restore-file", default=None, help="start from this checkpoint instead of from scratch")
    parser.add_argument("--image-size", type=int, default=None, help="--patch-image-size (default: recipe)")
    parser.add_argument("--trunk-updates", type=int, default=None,
                        help="ResNet trunk pre-training updates on the images' colour and shape (default: recipe)")
    parser.add_argument("--warmup-updates", type=int, default=None,
                        help="fairseq-train warm-up updates on the questions the text alone cannot answer: the "
                             "colour/shape ones and as many yes as no per yes/no question (default: recipe)")
    parser.add_argument("--updates", type=int, default=None, help="training updates (default: from the recipe)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"peak Adam learning rate (default {DEFAULT_LR})")
    parser.add_argument("--train-questions", type=int, default=None, help="use at most this many (default: all)")
    parser.add_argument("--test-questions", type=int, default=None, help="evaluate this many (default: recipe)")
    parser.add_argument("--valid-questions", type=int, default=None)
    parser.add_argument("--validate-every", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1 if (os.cpu_count() or 1) <= 2 else 4,
                        help="CPU threads (default 1 on machines with <= 2 cores: a busy neighbour stalls 2 threads)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    parser.add_argument("--fp32", action="store_true",
                        help="train in fp32 (default: bf16 weights with fp32 master copies on the CPU, fp16 on a GPU)")
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args(argv)
    recipe = RECIPES["full" if opts.full else "default"]
    chosen = lambda name: getattr(opts, name) if getattr(opts, name) is not None else getattr(recipe, name)  # noqa
    image_size, trunk_updates, warmup, updates, batch = (chosen(name) for name in (
        "image_size", "trunk_updates", "warmup_updates", "updates", "batch_size"))
    test_n = opts.test_questions or recipe.test_questions
    valid_n, every = opts.valid_questions or recipe.valid_questions, opts.validate_every or recipe.validate_every
    trunk_updates = 0 if opts.restore_file else trunk_updates  # a checkpoint brings its own trunk

    import torch

    from ..demo.easy_vqa_data import (REPORT_KINDS, SELECTED_COLS, balanced_questions, baselines, easy_vqa_questions,
                                      report_kinds, split_train, subsample, write_answers, write_tsv)
    from ..demo.plot import training_curve
    from ..userdir import USER_DIR

    started = time.time()
    out = os.path.abspath(opts.out)
    if opts.fresh and os.path.isdir(out):
        shutil.rmtree(out)
    folders = {name: os.path.join(out, name) for name in ("data", "vocab", "checkpoints", "logs")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    gpu = torch.cuda.is_available() and not opts.cpu
    device_flags = [] if gpu else ["--cpu"]
    precision = [] if opts.fp32 else ["--fp16"] if gpu else ["--bf16"]

    banner("1/6 easy-VQA -> TSV files")
    train_all, test_all, answers = easy_vqa_questions()
    train, valid_all = split_train(train_all)
    train = subsample(train, opts.train_questions, opts.seed)
    valid, test = subsample(valid_all, valid_n, opts.seed), subsample(test_all, test_n, opts.seed)
    data = folders["data"]
    paths = {name: os.path.join(data, f"{name}.tsv") for name in ("train", "balanced", "valid", "test")}
    splits = {"train": train, "valid": valid, "test": test}
    if warmup > 0:  # the warm-up's questions: written only when a warm-up runs
        splits["balanced"] = balanced = balanced_questions(train, opts.seed)
    for name, questions in splits.items():
        if not os.path.isfile(paths[name]):
            write_tsv(paths[name], questions)
        print(f"{name}: {len(questions)} questions -> {paths[name]}")
    ans2label = write_answers(os.path.join(data, "ans2label.json"), answers)

    banner("2/6 SentencePiece vocabulary on the questions and answers")
    vocab = folders["vocab"]
    if not os.path.isfile(os.path.join(vocab, "dict.txt")):
        from .train_spm import train as train_spm

        text = os.path.join(data, "text.txt")  # every question and answer of the training split
        with open(text, "w", encoding="utf-8") as handle:
            handle.writelines(f"{q.question}\n{q.answer}\n" for q in train)
        train_spm([text], vocab, VOCAB_SIZE, lowercase=True, hard_vocab_limit=False)
    print(f"vocabulary: {vocab}")

    checkpoints, train_log = folders["checkpoints"], os.path.join(folders["logs"], "train.log")
    banner(f"3/6 ResNet trunk pre-training: {trunk_updates} updates naming the colour and the shape of the "
           f"training images at {image_size} px (the demo's stand-in for OFA's ImageNet-initialised trunk)")
    trunk = None
    if trunk_updates > 0:
        from ..demo.trunk import cached_trunk

        torch.set_num_threads(opts.threads)
        trunk_path, trunk = cached_trunk(train, valid_all, checkpoints, image_size, trunk_updates, batch_size=batch,
                                         seed=opts.seed, device="cuda" if gpu else "cpu")
        named = ", ".join(f"{kind} " + ("n/a" if trunk[f"valid_{kind}_accuracy"] is None
                                        else f"{100 * trunk[f'valid_{kind}_accuracy']:.1f}%")
                          for kind in ("colour", "shape"))
        print(f"trunk: {trunk_path} (validation images named right: {named})")
    else:
        print("skipped" + (" (--restore-file brings its trunk)" if opts.restore_file else ""))

    banner(f"4/6 fairseq-train: ofa_tiny from {opts.restore_file or 'scratch'}"
           f"{' with the pre-trained trunk' if trunk else ''}, {warmup} warm-up updates on the questions the "
           f"text alone cannot answer, then {updates} updates on all questions, {batch} a batch "
           f"({'GPU' if gpu else f'CPU, {opts.threads} threads'})")
    task_flags = ["--user-dir", USER_DIR, "--task", "vqa_gen", "--bpe-dir", vocab, "--selected-cols", SELECTED_COLS,
                  "--ans2label-file", ans2label]
    common = [*task_flags, *ARCH_FLAGS, *RECIPE_FLAGS, "--patch-image-size", str(image_size), *device_flags,
              *precision, "--lr", str(opts.lr), "--batch-size", str(batch), "--seed", str(opts.seed),
              "--valid-batch-size", "13", "--batch-size-valid", "64", "--keep-interval-updates", "1",
              "--no-epoch-checkpoints", "--best-checkpoint-metric", "vqa_score", "--maximize-best-checkpoint-metric",
              "--num-workers", "1", "--log-format", "simple", "--log-interval", "20"]
    if trunk:
        # the pre-trained trunk stays fixed (weights and BatchNorm statistics): trained on, it loses its
        # colour/shape features under the yes/no questions' gradients; fixed, each update skips its backward pass
        common += ["--freeze-resnet", "--freeze-resnet-weights"]
    first = (["--finetune-from-model", opts.restore_file] if opts.restore_file
             else ["--resnet-model-path", trunk_path] if trunk else [])
    if warmup > 0:
        warm_dir = os.path.join(checkpoints, "warmup")
        print(f"--- warm-up: {warmup} updates on {len(balanced)} questions: the colour/shape ones and as many "
              f"yes as no answers per yes/no question")
        run(fairseq("train") + [
            f"{paths['balanced']},{paths['valid']}", *common, "--max-update", str(warmup),
            "--save-dir", warm_dir, "--save-interval-updates", str(warmup), "--validate-interval-updates",
            str(warmup), *first], train_log, opts.threads)
        first = ["--finetune-from-model", os.path.join(warm_dir, "checkpoint_last.pt")]
    print(f"--- training: {updates} updates on all {len(train)} questions")
    run(fairseq("train") + [
        f"{paths['train']},{paths['valid']}", *common, "--max-update", str(updates), "--save-dir", checkpoints,
        "--save-interval-updates", str(every), "--validate-interval-updates", str(every),
        "--tensorboard-logdir", os.path.join(folders["logs"], "tensorboard"), *first], train_log, opts.threads)
    best = os.path.join(checkpoints, "checkpoint_best.pt")
    if not os.path.isfile(best):
        best = os.path.join(checkpoints, "checkpoint_last.pt")
    with open(train_log, encoding="utf-8") as handle:
        losses, scores = parse_curve(handle.read())
    curve = training_curve(os.path.join(out, "training_curve.png"), losses, scores, "vqa_score")

    banner("5/6 fairseq-generate (trie-constrained beam search) and fairseq-validate on the test questions")
    predictions = os.path.join(out, "test_predict.json")
    generated = run(fairseq("generate") + [
        f"{paths['train']},{paths['test']}", *task_flags, "--path", best, "--gen-subset", "test", "--beam", "5",
        "--unnormalized",  # answers of different lengths compete by total log-probability, as in the reference
        "--batch-size", "64", "--scoring", "vqa_accuracy", "--predictions-json", predictions,
        "--model-overrides", "{'val_inference_type': 'beamsearch'}", *device_flags],
        os.path.join(folders["logs"], "generate.log"), opts.threads)
    validated = run(fairseq("validate") + [
        f"{paths['train']},{paths['test']}", *task_flags, "--path", best, "--valid-subset", "valid",
        "--batch-size", "64", *device_flags], os.path.join(folders["logs"], "validate.log"), opts.threads)

    banner("6/6 results")
    reported = float(re.search(r"VQA accuracy = ([\d.]+)", generated).group(1))
    with open(predictions, encoding="utf-8") as handle:
        predicted = {r["question_id"]: r["answer"] for r in json.load(handle)}

    def percent_correct(questions) -> float:
        return 100.0 * sum(predicted[q.qid] == q.answer for q in questions) / len(questions)

    accuracy = percent_correct(test)
    allcand = re.search(r"vqa_score ([\d.]+)", validated)
    base = baselines(train, test)
    by_kind = {}
    for kind in REPORT_KINDS:
        asked = [q for q in test if kind in report_kinds(q)]
        if asked:
            by_kind[kind] = {"questions": len(asked),
                             "accuracy": round(percent_correct(asked), 2),
                             "question_only_prior": round(baselines(train, asked)["question_only"], 2)}
    report = {
        "test_questions": len(test), "accuracy": round(accuracy, 2), "generate_score_line": reported,
        "validate_all_candidates": float(allcand.group(1)) * 100 if allcand else None,
        "majority_baseline": round(base["majority"], 2), "question_only_prior": round(base["question_only"], 2),
        "by_question_kind": by_kind, "trunk": trunk,
        "recipe": {"image_size": image_size, "trunk_updates": trunk_updates, "warmup_updates": warmup,
                   "updates": updates, "batch_size": batch, "lr": opts.lr},
        "updates": updates, "minutes": round((time.time() - started) / 60, 1),
        "checkpoint": best, "logs": folders["logs"], "training_curve": curve, "predictions": predictions,
    }
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    print(f"test accuracy (beam search, {len(test)} questions): {accuracy:.2f}%   "
          f"[fairseq-generate: {reported:.2f}%; all-candidate scoring: {report['validate_all_candidates']}]")
    print(f"majority answer ({base['majority_answer']!r}): {base['majority']:.2f}%   "
          f"question-only prior: {base['question_only']:.2f}%")
    for kind, row in by_kind.items():
        print(f"  {kind} ({row['questions']} questions): {row['accuracy']:.2f}%   "
              f"question-only prior: {row['question_only_prior']:.2f}%")
    print("sample answers:")
    for q in test[:6]:
        print(f"  {q.image_id}.png  {q.question:<40} truth: {q.answer:<10} model: {predicted[q.qid]}")
    print(f"checkpoint: {best}\nlogs: {folders['logs']}\ntraining curve: {curve}\nreport: "
          f"{os.path.join(out, 'report.json')}\ntotal time: {report['minutes']} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
