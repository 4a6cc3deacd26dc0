"""Model benchmark: ofa_tiny forward, forward+backward and incremental greedy decoding.

Prints one JSON line per measurement (name, config, device, dtype, threads, median seconds, runs).
Compares the fast (SDPA) and eager attention paths in the same run, plus bf16 autocast and
channels_last for the ResNet. Usage:

    OMP_NUM_THREADS=2 python bench/bench_model.py [--threads 2] [--runs 5] [--device cpu] [--profile]
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from biomedgpt.cli.model_check import BIOMEDGPT_FLAGS, build_from_argv  # noqa: E402
from biomedgpt.models import set_attention_impl  # noqa: E402


def make_batch(task, device, bsz=8, src_len=30, tgt_len=20, image=256):
    g = torch.Generator().manual_seed(0)
    vocab = 50000
    src = torch.randint(4, vocab, (bsz, src_len), generator=g)
    src[:, 0], src[:, -1] = task.source_dictionary.bos(), task.source_dictionary.eos()
    prev = torch.randint(4, vocab, (bsz, tgt_len), generator=g)
    prev[:, 0] = task.source_dictionary.bos()
    return {
        "src_tokens": src.to(device),
        "src_lengths": torch.full((bsz,), src_len).to(device),
        "patch_images": torch.randn(bsz, 3, image, image, generator=g).to(device),
        "patch_masks": torch.ones(bsz, dtype=torch.bool).to(device),
        "prev_output_tokens": prev.to(device),
    }


def seconds(fn, device) -> float:
    """Wall time of one call of `fn` (CUDA work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed(fn, runs, device):
    fn()  # warm-up
    times = [seconds(fn, device) for _ in range(runs)]
    return statistics.median(times), times


def gemm_ceiling(dtype, device, runs):
    """Measured dense matmul throughput (GFLOP/s) of a 2048^3 GEMM: the roofline the model is compared with."""
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    b = torch.randn(2048, 2048, device=device, dtype=dtype)
    median, _ = timed(lambda: a @ b, max(runs, 5), device)
    return 2 * 2048 ** 3 / median / 1e9


def count_gflop(fn):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def greedy(model, batch, steps, encoder_out=None):
    """Encoder (unless `encoder_out` is given) + `steps` incremental greedy decoder steps."""
    net = {k: v for k, v in batch.items() if k != "prev_output_tokens"}
    encoder_out = encoder_out or model.encoder(**net)
    tokens = batch["src_tokens"][:, :1]
    state = {}
    for _ in range(steps):
        logits, _ = model.decoder(tokens, encoder_out=encoder_out, incremental_state=state)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--configs", default="eager-fp32,sdpa-fp32,sdpa-fp32-cl,sdpa-bf16-cl",
                        help="comma-separated attention-dtype[-cl] configurations (cl: channels_last ResNet, "
                             "the default of the model)")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one training step")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    model, task, _ = build_from_argv(["DATA", "--task=ofa", "--arch=ofa_tiny", *BIOMEDGPT_FLAGS])
    model.to(device)
    batch = make_batch(task, device)
    meta = {"machine": platform.processor() or platform.machine(), "device": str(device),
            "threads": opts.threads, "torch": torch.__version__,
            "batch": "8 x (256px image + 30 src) -> 20 tgt"}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(0)

    ceilings = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ceilings[name] = gemm_ceiling(dtype, device, opts.runs)
        print(json.dumps({"name": "gemm_ceiling_2048", "dtype": name, "gflops": round(ceilings[name], 1), **meta}),
              flush=True)
    flops = {}
    for config in opts.configs.split(","):
        parts = config.split("-")
        impl, dtype = parts[0], parts[1]
        channels_last = "cl" in parts[2:]
        set_attention_impl(impl)
        resnet = model.encoder.embed_images
        resnet.channels_last = channels_last
        resnet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        run_batch = batch
        autocast = (torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])
                    if dtype != "fp32" else contextlib.nullcontext())

        def forward():
            model.eval()
            with torch.no_grad(), autocast:
                model(**run_batch)

        def train_step():
            model.train()
            model.zero_grad(set_to_none=True)
            with autocast:
                logits, _ = model(**run_batch)
                loss = logits.float().logsumexp(-1).mean()
            loss.backward()

        def decode():
            model.eval()
            with torch.no_grad(), autocast:
                greedy(model, run_batch, opts.steps)

        encoder_out = {}

        def decode_steps_only():
            model.eval()
            with torch.no_grad(), autocast:
                if not encoder_out:
                    net = {k: v for k, v in run_batch.items() if k != "prev_output_tokens"}
                    encoder_out.update(model.encoder(**net))
                greedy(model, run_batch, opts.steps, encoder_out=encoder_out)

        def resnet_train_step():
            model.train()
            model.zero_grad(set_to_none=True)
            with autocast:
                resnet(run_batch["patch_images"]).float().sum().backward()

        if not flops:
            flops = {"forward": count_gflop(forward), "forward_backward": count_gflop(train_step),
                     "resnet_forward_backward": count_gflop(resnet_train_step)}
        measurements = (("forward", forward), ("forward_backward", train_step),
                        ("resnet_forward_backward", resnet_train_step), (f"greedy_{opts.steps}", decode),
                        (f"decoder_steps_{opts.steps}", decode_steps_only))
        for name, fn in measurements:
            median, times = timed(fn, opts.runs, device)
            line = {"name": name, "config": config, "attention": impl, "dtype": dtype,
                    "channels_last": channels_last, "median_s": round(median, 4),
                    "runs": [round(t, 4) for t in times]}
            if name in flops:
                achieved = flops[name] / median
                line.update(gflop=round(flops[name], 1), gflops=round(achieved, 1),
                            pct_of_gemm_ceiling=round(100 * achieved / ceilings[dtype if dtype in ceilings else "fp32"], 1))
            print(json.dumps({**line, **meta}), flush=True)
        if opts.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                train_step()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)
    set_attention_impl("sdpa")


if __name__ == "__main__":
    main()
