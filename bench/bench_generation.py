"""Generation benchmark: VQA answers per second on `ofa_tiny`, trie-constrained beam search vs all-candidate scoring.

A VQA-RAD-like setting: 256 px images, a closed set of 50 short answers ("yes" and "no" first), questions of
10-15 words, `--prompt-type prev_output` (the question is the decoder prompt). The task and the (randomly
initialised) model are built through fairseq's own parser as `fairseq-train --task vqa_gen --arch ofa_tiny` does,
from a synthetic TSV in BiomedGPT's VQA layout; batches come from the task's dataset and collater.

* `beam5`: the task's validation decoder (`task.sequence_generator` with the reference's VQA `--eval-args`:
  beam 5, unnormalised scores), i.e. `OFASequenceGenerator` with the answer trie before the softmax, the
  question forced as a decoder prefix, through `task.inference_step`.
* `allcand`: the task's `build_generator` under the default `--val-inference-type allcand`, i.e.
  `CandidateGenerator` over `CandidateScorer` (every answer scored, `--valid-batch-size` 20 answers per pass).

A measured call answers max(batch size, `--min-sentences`) questions (8: each question once), as one batch or
as batches of the given size; sentences/s = questions per call / median call time. Low-precision dtypes run
under `torch.autocast` (CPU: bf16; CUDA: fp16 or bf16) at the batch sizes of `--low-precision-batch-sizes`.

The machine is shared, so the configurations are timed in interleaved rounds: one call of each per round, after
a warm-up round, and no new round that would end after `--budget-s`. A burst of foreign load then hits all
configurations alike. Before each run the script waits up to `--settle-s` for a quiet second. Each run records
the 1-minute load average, the process CPU time and the CPUs other processes used during it (from /proc/stat);
`median` is over all runs, `median_quiet` over the runs during which others used < `--quiet-cores` CPUs.
Prints one JSON line per configuration. Usage:

    OMP_NUM_THREADS=2 python bench/bench_generation.py [--threads 2] [--repeats 5] [--device cpu|cuda]
        [--dtype fp32,bf16]
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_data import cpu_seconds, machine_info, synthetic_image  # noqa: E402
from bench_model import seconds  # noqa: E402
from biomedgpt.cli.model_check import BIOMEDGPT_FLAGS, build_from_argv  # noqa: E402

# 50 short answers of the VQA-RAD kind: yes/no first (about half of VQA-RAD's closed questions), then organs,
# modalities, planes, findings, sides, counts.
ANSWERS = [
    "yes", "no", "axial", "coronal", "sagittal", "ct", "mri", "x-ray", "ultrasound", "pa", "ap", "t1", "t2",
    "flair", "with contrast", "without contrast", "left", "right", "bilateral", "chest", "abdomen", "head",
    "brain", "lung", "liver", "kidney", "spleen", "heart", "pancreas", "gallbladder", "bowel", "right lung",
    "left kidney", "pneumothorax", "pleural effusion", "cardiomegaly", "atelectasis", "nodule", "mass",
    "edema", "hemorrhage", "infarct", "fracture", "free air", "calcification", "ring enhancing lesion",
    "1", "2", "3", "normal",
]
# 10-15 words each, lower case as `pre_question` leaves them.
QUESTIONS = [
    "is there evidence of a pneumothorax in the right upper lobe of this chest film",
    "which organ in the upper right quadrant of the abdomen shows an abnormal mass",
    "in which plane was this image of the patient's head and neck taken",
    "is the lesion seen in the liver hypodense compared with the surrounding normal tissue",
    "what imaging modality was used to acquire this image of the patient's abdomen",
    "are the findings in the lungs consistent with a bilateral pleural effusion on this film",
    "which side of the brain shows the area of hemorrhage with surrounding edema",
    "how many ring enhancing lesions can be seen in the brain on this scan",
]
assert len(ANSWERS) == 50 and len(set(ANSWERS)) == 50 and ANSWERS[:2] == ["yes", "no"]
assert all(10 <= len(q.split()) <= 15 for q in QUESTIONS)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def write_tsv(path: str, rows: int, image_size: int) -> None:
    """BiomedGPT's VQA layout (`question_id, image_id, question, conf|!+answer, objects, base64`, read with
    `--selected-cols 0,5,2,3,4`), scan-like JPEGs of `image_size` px."""
    import base64
    import io

    import numpy as np

    rng = np.random.default_rng(0)
    with open(path, "w") as handle:
        for i in range(rows):
            buffer = io.BytesIO()
            synthetic_image(rng, image_size).save(buffer, format="JPEG", quality=90)
            answer = ANSWERS[i % len(ANSWERS)]
            handle.write("\t".join([str(i), f"img{i}", QUESTIONS[i % len(QUESTIONS)], f"1.0|!+{answer}", "",
                                    base64.b64encode(buffer.getvalue()).decode()]) + "\n")


def build_vqa(data: str, patch_image_size: int):
    """`(model, task)` as `fairseq-train DATA --task vqa_gen --arch ofa_tiny` builds them (random weights)."""
    ans2label = json.dumps({answer: i for i, answer in enumerate(ANSWERS)})
    model, task, _ = build_from_argv([data, "--task=vqa_gen", "--arch=ofa_tiny", *BIOMEDGPT_FLAGS,
                                      "--selected-cols", "0,5,2,3,4", "--ans2label-dict", ans2label,
                                      "--prompt-type", "prev_output", "--patch-image-size", str(patch_image_size)])
    return model.eval(), task


def make_batches(task, dataset, sentences: int, batch_size: int, device):
    """The first `sentences` rows of `dataset`, collated in batches of `batch_size`, on `device`."""
    from fairseq import utils

    items = [dataset[i] for i in range(sentences)]
    batches = [dataset.collater(items[i:i + batch_size]) for i in range(0, sentences, batch_size)]
    return [utils.apply_to_sample(lambda t: t.to(device), batch) for batch in batches]


def generators(task, model):
    """`{mode: generator}` for the two ways the task answers a closed-set question."""
    assert task.uses_all_candidates()  # --val-inference-type allcand (the default)
    gen_args = task.gen_args  # the reference's VQA --eval-args: beam 5, unnormalised
    assert gen_args.get("beam") == 5, gen_args
    return {"beam5": task.sequence_generator([model], gen_args),
            "allcand": task.build_generator([model], argparse.Namespace(nbest=1))}


def answers(task, generator, model, batches):
    """The best answer string of every row of every batch (one measured call)."""
    out = []
    for batch in batches:
        hypos = task.inference_step(generator, [model], batch)
        out.extend(task.text.decode(row[0]["tokens"]) for row in hypos)
    return out


class Measurement:
    """One (mode, batch size, dtype) configuration: its batches, generator and the runs collected so far."""

    def __init__(self, task, model, generator, mode, batch_size, dtype, batches, device):
        self.task, self.model, self.generator, self.device = task, model, generator, device
        self.mode, self.batch_size, self.dtype, self.batches = mode, batch_size, dtype, batches
        self.sentences = sum(len(b["id"]) for b in batches)
        self.runs, self.cpu, self.loads, self.foreign, self.waited, self.answers = [], [], [], [], [], None

    def call(self):
        autocast = (torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.dtype]) if self.dtype != "fp32"
                    else contextlib.nullcontext())
        with autocast:
            self.answers = answers(self.task, self.generator, self.model, self.batches)

    def run(self, record: bool = True, settle_s: float = 0.0):
        waited = wait_for_quiet(settle_s)
        load, cpu, busy = os.getloadavg()[0], cpu_seconds(children=False), machine_busy_seconds()
        wall = seconds(self.call, self.device)
        own = cpu_seconds(children=False) - cpu
        assert set(self.answers) <= set(self.task.answers), self.answers
        if record:
            self.runs.append(wall)
            self.cpu.append(own)
            self.loads.append(round((load + os.getloadavg()[0]) / 2, 2))
            self.foreign.append(None if busy is None else max(0.0, (machine_busy_seconds() - busy - own) / wall))
            self.waited.append(waited)

    def line(self, reference, quiet_cores: float) -> dict:
        median = statistics.median(self.runs)
        quiet = [t for t, f in zip(self.runs, self.foreign) if f is not None and f < quiet_cores]
        agree = sum(a == b for a, b in zip(self.answers, reference)) / len(self.answers)

        def per_s(call_s):
            return round(self.sentences / call_s, 2)

        return {"name": f"vqa_{self.mode}", "config": f"{self.mode}-bs{self.batch_size}-{self.dtype}",
                "mode": self.mode, "batch_size": self.batch_size, "dtype": self.dtype,
                "autocast": self.dtype != "fp32", "median": per_s(median), "unit": "sentences/s",
                "ms_per_sentence": round(1000 * median / self.sentences, 1), "sentences_per_call": self.sentences,
                "median_call_s": round(median, 4), "runs_s": [round(t, 4) for t in self.runs],
                "best_sentences_per_s": per_s(min(self.runs)),
                # the same median over the runs during which other processes used < quiet_cores CPUs
                "quiet_runs": len(quiet), "median_quiet": per_s(statistics.median(quiet)) if quiet else None,
                "ms_per_sentence_quiet": round(1000 * statistics.median(quiet) / self.sentences, 1) if quiet else None,
                # process CPU seconds per call: about threads x wall when the call had its cores to itself
                "cpu_s_per_run": [round(c, 2) for c in self.cpu],
                # CPUs used by everything else on the machine during each run (/proc/stat busy - own CPU time)
                "foreign_cores_runs": [None if f is None else round(f, 2) for f in self.foreign],
                "settle_wait_s_runs": [round(w, 1) for w in self.waited],
                # 1-minute load average around each run (mean of before/after), and their median
                "loadavg_1min_runs": self.loads, "loadavg_1min_median": statistics.median(self.loads),
                "top1_agrees_with_fp32_allcand": agree}


def machine_busy_seconds():
    """Non-idle CPU seconds of the whole machine, all CPUs (`/proc/stat`; steal counts as busy), or None."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(limit_s: float, window_s: float = 1.0, cores: float = 0.25) -> float:
    """Wait (at most `limit_s`) for a `window_s` window in which the machine used < `cores` CPUs; seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        busy = machine_busy_seconds()
        if busy is None:
            break
        time.sleep(window_s)
        if (machine_busy_seconds() - busy) / window_s < cores:
            break
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default=None,
                        help="comma-separated fp32, bf16, fp16 (low precision = torch.autocast); default fp32,bf16 "
                             "on the CPU and fp32,fp16,bf16 on CUDA")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--budget-s", type=float, default=420,
                        help="total seconds: no timed round is started that would (at the pace of the previous "
                             "one) end later; at least one round is timed")
    parser.add_argument("--settle-s", type=float, default=5,
                        help="before each timed run, wait up to this long for a 1 s window with < 0.25 CPUs busy")
    parser.add_argument("--quiet-cores", type=float, default=0.25,
                        help="median_quiet: runs during which other processes used fewer CPUs than this")
    parser.add_argument("--modes", default="beam5,allcand")
    parser.add_argument("--batch-sizes", default="1,16", help="fp32 batch sizes")
    parser.add_argument("--low-precision-batch-sizes", default="16")
    parser.add_argument("--min-sentences", type=int, default=8,
                        help="questions answered per call: max(batch size, this); 8 = each question once")
    parser.add_argument("--patch-image-size", type=int, default=256)
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    device = torch.device(opts.device)
    dtypes = (opts.dtype or ("fp32,fp16,bf16" if device.type == "cuda" else "fp32,bf16")).split(",")
    import logging

    logging.disable(logging.WARNING)  # fairseq/plugin INFO lines would interleave with the JSON lines
    started = time.perf_counter()
    configs = [(dtype, int(b)) for dtype in dtypes
               for b in (opts.batch_sizes if dtype == "fp32" else opts.low_precision_batch_sizes).split(",")]
    rows = max(max(b for _, b in configs), opts.min_sentences)
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "vqa_valid.tsv")
        write_tsv(data, rows, image_size=384)
        model, task = build_vqa(data, opts.patch_image_size)
        task.load_dataset("valid")
        dataset = task.dataset("valid")
        model.to(device)
        gens = generators(task, model)
        meta = {"task": "vqa_gen", "arch": "ofa_tiny (random init)", "device": str(device),
                "threads": opts.threads, "patch_image_size": opts.patch_image_size, "answer_set": len(task.answers),
                "question_words": [min(len(q.split()) for q in QUESTIONS), max(len(q.split()) for q in QUESTIONS)],
                "prompt_type": "prev_output", "beam_args": task.gen_args, "allcand_chunk": task.scorer.chunk_size,
                "timing": "rounds interleave all configurations; median over rounds after a warm-up round",
                **machine_info()}
        if device.type == "cuda":
            meta["gpu"] = torch.cuda.get_device_name(0)
        measurements = [Measurement(task, model, gens[mode], mode, batch_size, dtype,
                                    make_batches(task, dataset, max(batch_size, opts.min_sentences), batch_size,
                                                 device), device)
                        for dtype, batch_size in configs for mode in opts.modes.split(",")]
        # fp32 all-candidate answers of every row: the ranking the beam answers are compared with (not timed)
        reference = answers(task, gens["allcand"], model, make_batches(task, dataset, rows, rows, device))
        for m in measurements:
            m.run(record=False)  # warm-up round
        for round_index in range(opts.repeats):
            round_start = time.perf_counter()
            for m in measurements:
                m.run(settle_s=opts.settle_s)
            last_round = time.perf_counter() - round_start
            if time.perf_counter() + last_round - started > opts.budget_s:
                break  # the next round would probably end after the budget
        for m in measurements:
            print(json.dumps({**m.line(reference, opts.quiet_cores), "rounds": len(m.runs),
                              "total_s": round(time.perf_counter() - started, 1), **meta}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
