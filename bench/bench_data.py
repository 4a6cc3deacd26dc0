"""Data benchmark: `vqa_gen` dataset + collate throughput at 256 px, through fairseq's batch iterator.

Writes a synthetic VQA TSV in BiomedGPT's layout (`question_id, image_id, question, conf|!+answer, objects,
base64`, read with `--selected-cols 0,5,2,3,4`) with JPEG images larger than the model input (resized by the
dataset to `--patch-image-size`), builds the task through fairseq's own argument parser, loads the train
split and iterates `task.get_batch_iterator(...).next_epoch_itr(shuffle=True)` as `fairseq-train` does
(a fresh iterator, hence fresh DataLoader workers, every epoch), for each `--num-workers` value.

Prints one JSON line per worker count: samples/s (median of `--passes` timed passes after a warm-up pass),
the time to the first batch, threads and machine info; compared with the measured `ofa_tiny` training step
(BENCHMARKS.md). Usage:

    OMP_NUM_THREADS=1 python bench/bench_data.py [--rows 512] [--image-size 384] [--workers 0,1,2]
"""
import argparse
import base64
import gc
import io
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import biomedgpt  # noqa: E402,F401  (registers the plugin's tasks and models)

# BENCHMARKS.md, "Model: ofa_tiny, batch 8, 256x256 images": forward_backward, sdpa-fp32-cl (the default),
# median 2.257 s for a batch of 8 on the project CPU machine (2 threads).
MODEL_STEP_SECONDS = 2.257
MODEL_STEP_BATCH = 8

ANSWERS = ["yes", "no", "left", "right", "chest", "abdomen", "head", "ct", "mri", "x-ray", "lung", "liver",
           "kidney", "heart", "brain", "axial", "coronal", "pneumothorax", "effusion", "nodule"]
QUESTIONS = ["is there evidence of a pneumothorax in this image", "which organ is abnormal", "what modality is used",
             "in which plane is this image taken", "is the lesion on the left or right side of the patient",
             "what part of the body is shown", "is this a normal scan", "where is the mass located"]


def synthetic_image(rng: np.random.Generator, size: int) -> Image.Image:
    """A scan-like image: smooth low-frequency anatomy-ish intensity field, a few bright blobs, sensor noise."""
    coarse = rng.normal(0.0, 1.0, (8, 8)).astype(np.float32)
    field = np.array(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(int(rng.integers(2, 6))):
        cy, cx, radius = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.03, 0.15)
        field += 2.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))
    field += rng.normal(0.0, 0.15, (size, size)).astype(np.float32)
    gray = np.clip((field - field.min()) / (np.ptp(field) + 1e-6) * 255.0, 0, 255).astype(np.uint8)
    tint = rng.uniform(0.9, 1.0, 3)  # near-grey RGB, as exported medical images usually are
    rgb = np.clip(gray[..., None] * tint[None, None, :], 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, mode="RGB")


def write_vqa_tsv(path: str, rows: int, image_size: int, seed: int = 0) -> dict:
    """BiomedGPT VQA layout; returns size statistics of what was written."""
    rng = np.random.default_rng(seed)
    jpeg_bytes = []
    with open(path, "w") as handle:
        for i in range(rows):
            buffer = io.BytesIO()
            synthetic_image(rng, image_size).save(buffer, format="JPEG", quality=90)
            jpeg_bytes.append(buffer.tell())
            image = base64.b64encode(buffer.getvalue()).decode()
            answer = ANSWERS[int(rng.integers(len(ANSWERS)))]
            other = ANSWERS[int(rng.integers(len(ANSWERS)))]
            answers = f"1.0|!+{answer}" if other == answer else f"1.0|!+{answer}&&0.3|!+{other}"
            question = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
            handle.write("\t".join([str(i), f"img{i}", question, answers, "", image]) + "\n")
    return {"rows": rows, "image_side": image_size, "image_format": "JPEG q90",
            "mean_image_kb": round(float(np.mean(jpeg_bytes)) / 1024, 1),
            "tsv_mb": round(os.path.getsize(path) / 2 ** 20, 1)}


def build_task(data: str, patch_image_size: int):
    """The task exactly as `fairseq-train DATA --task vqa_gen ...` sets it up (no model is built)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [data, "--task", "vqa_gen", "--arch", "ofa_tiny", "--selected-cols", "0,5,2,3,4",
            "--patch-image-size", str(patch_image_size), "--prompt-type", "prev_output",
            "--ans2label-dict", json.dumps({answer: i for i, answer in enumerate(ANSWERS)}),
            "--batch-size", "8", "--cpu"]
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
    cfg = convert_namespace_to_omegaconf(args)
    return tasks.setup_task(cfg.task), cfg


def one_pass(task, dataset, batch_size: int, workers: int, epoch: int):
    """One epoch as fairseq-train runs it: a new epoch iterator (new workers), every batch collated.

    Returns (seconds, seconds to the first batch, samples seen, CPU seconds of the pass: this process's during
    the iteration, plus its workers', read once they have been shut down and reaped)."""
    main_cpu_start, workers_cpu_start = cpu_seconds(children=False), cpu_seconds(own=False)
    start = time.perf_counter()
    epoch_itr = task.get_batch_iterator(dataset=dataset, max_sentences=batch_size, seed=1, num_workers=workers,
                                        epoch=epoch, disable_iterator_cache=True)
    itr = epoch_itr.next_epoch_itr(shuffle=True)
    first, samples = None, 0
    for batch in itr:
        if first is None:
            first = time.perf_counter() - start
        samples += batch["nsentences"]
    seconds = time.perf_counter() - start
    main_cpu = cpu_seconds(children=False) - main_cpu_start
    # Shut this pass's (persistent) workers down before the next pass forks new ones (outside the timing).
    # Left to `del` + gc.collect() here, each worker was seen idling in its index queue until torch's 5 s
    # join timeout, which only lengthened the benchmark (fairseq-train itself showed no such stall).
    loader_itr = getattr(itr, "_itr", None)
    if hasattr(loader_itr, "_shutdown_workers"):
        loader_itr._shutdown_workers()
    del itr, epoch_itr, batch, loader_itr
    gc.collect()
    return seconds, first, samples, main_cpu + cpu_seconds(own=False) - workers_cpu_start


def cpu_seconds(own: bool = True, children: bool = True) -> float:
    """User + system CPU seconds of this process and/or of its reaped children (DataLoader workers)."""
    total = 0.0
    for who, wanted in ((resource.RUSAGE_SELF, own), (resource.RUSAGE_CHILDREN, children)):
        if wanted:
            usage = resource.getrusage(who)
            total += usage.ru_utime + usage.ru_stime
    return total


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import PIL

    return {"cpu": cpu, "cpus": os.cpu_count(), "affinity_cpus": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "pillow": PIL.__version__, "python": platform.python_version(),
            "main_torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=384, help="side of the stored JPEGs")
    parser.add_argument("--patch-image-size", type=int, default=256, help="--patch-image-size of the task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated --num-workers values")
    parser.add_argument("--passes", type=int, default=3, help="timed passes (after one warm-up pass)")
    parser.add_argument("--tmpdir", default=None, help="where to write the synthetic TSV (default: a temp dir)")
    args = parser.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)  # fairseq logs every iterator creation at INFO
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as folder:
        path = os.path.join(folder, "vqa_train.tsv")
        started = time.perf_counter()
        data_info = write_vqa_tsv(path, args.rows, args.image_size)
        data_info["write_s"] = round(time.perf_counter() - started, 1)
        task, _ = build_task(path, args.patch_image_size)
        task.load_dataset("train")
        dataset = task.dataset("train")
        sample = dataset.collater([dataset[i] for i in range(args.batch_size)])
        shapes = {"patch_images": list(sample["net_input"]["patch_images"].shape),
                  "src_tokens": list(sample["net_input"]["src_tokens"].shape),
                  "constraint_masks": list(sample["constraint_masks"].shape)}
        model_sps = MODEL_STEP_BATCH / MODEL_STEP_SECONDS
        meta = {"task": "vqa_gen", "batch_size": args.batch_size, "patch_image_size": args.patch_image_size,
                "data": data_info, "batch_shapes": shapes, **machine_info()}
        epoch = 1
        for workers in (int(w) for w in args.workers.split(",")):
            one_pass(task, dataset, args.batch_size, workers, epoch)  # warm-up (page cache, BPE caches, imports)
            epoch += 1
            runs, firsts, cpus = [], [], []
            load_before = os.getloadavg()[0]
            for _ in range(args.passes):
                seconds, first, samples, cpu = one_pass(task, dataset, args.batch_size, workers, epoch)
                epoch += 1
                assert samples == len(dataset), (samples, len(dataset))
                runs.append(seconds)
                firsts.append(first)
                cpus.append(cpu)
            median = statistics.median(runs)
            sps = len(dataset) / median
            line = {"name": "vqa_gen_data_throughput", "num_workers": workers,
                    "samples_per_s": round(sps, 1), "median_pass_s": round(median, 3),
                    "passes_s": [round(r, 3) for r in runs],
                    "first_batch_s_median": round(statistics.median(firsts), 3),
                    "ms_per_sample": round(1000 * median / len(dataset), 2),
                    # CPU time (main process + workers) per sample: less sensitive to other load on the machine
                    "cpu_ms_per_sample_median": round(1000 * statistics.median(cpus) / len(dataset), 2),
                    "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                    "model_step_samples_per_s_reference": round(model_sps, 2),
                    "model_step_reference": "BENCHMARKS.md ofa_tiny forward_backward sdpa-fp32-cl, batch 8 x 256px, "
                                            f"{MODEL_STEP_SECONDS} s, 2 threads",
                    "data_is_bottleneck": bool(sps < model_sps),
                    # with 0 workers the data work is serial with the step: the share of the step time it adds
                    "data_share_of_step_if_serial": round((1 / sps) / (1 / sps + 1 / model_sps), 4),
                    **meta}
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
