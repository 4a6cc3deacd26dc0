"""`biomedgpt-check`: a small end-to-end check of the installed plugin, printing what it did.

Builds an `ofa_*` model through fairseq's own argument parser (as `fairseq-train --task ofa` does), runs
one image+question forward pass, greedy incremental decoding checked against full forward passes, saves a
checkpoint in the released layout and loads it back through `fairseq.checkpoint_utils`.
"""
import argparse
import os
import tempfile
import time
from argparse import Namespace

import torch

BIOMEDGPT_FLAGS = [
    "--encoder-normalize-before", "--decoder-normalize-before", "--share-decoder-input-output-embed",
    "--share-all-embeddings", "--layernorm-embedding", "--patch-layernorm-embedding", "--code-layernorm-embedding",
    "--add-type-embedding", "--scale-attn", "--scale-fc", "--scale-heads", "--disable-entangle", "--num-bins=1000",
]


def build_from_argv(argv):
    """`(model, task, args)` built exactly as `fairseq-train` builds them from a command line."""
    import biomedgpt  # noqa: F401
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=list(argv))
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    return model, task, cfg.model


def save_released_layout(model, args: Namespace, path: str, with_ema: bool = True) -> None:
    """Write a checkpoint shaped like the released ones: `cfg.model` is an argparse.Namespace."""
    state = model.state_dict()
    checkpoint = {
        "args": None,
        "cfg": {"common": {}, "task": {"_name": "ofa"}, "model": args, "criterion": {"_name": "cross_entropy"}},
        "model": state,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "AdjustLabelSmoothedCrossEntropyCriterion",
                               "optimizer_name": "FairseqAdam", "lr_scheduler_state": {"best": None},
                               "num_updates": 0}],
        "task_state": {},
        "extra_state": {"metrics": {}, "previous_training_time": 0.0,
                        "train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True, "version": 2}},
        "last_optimizer_state": None,
    }
    if with_ema:
        checkpoint["extra_state"]["ema"] = state
    torch.save(checkpoint, path)


@torch.no_grad()
def greedy_decode(model, net_input, steps: int, no_repeat: bool = False):
    """Greedy incremental decoding from BOS over the full vocabulary (optionally never repeating an id).

    Returns `(tokens [B, steps+1], step_logits [B, steps, V])` (logits before the no-repeat masking).
    """
    encoder_out = model.encoder(**net_input)
    bsz = net_input["src_tokens"].size(0)
    tokens = net_input["src_tokens"].new_full((bsz, 1), model.encoder.dictionary.bos())
    state, step_logits = {}, []
    for _ in range(steps):
        logits, _ = model.decoder(tokens, encoder_out=encoder_out, incremental_state=state)
        logits = logits[:, -1].float()
        step_logits.append(logits.clone())
        if no_repeat:
            logits.scatter_(1, tokens, float("-inf"))
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens, torch.stack(step_logits, dim=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ofa_tiny", help="architecture to build (default ofa_tiny)")
    parser.add_argument("--bpe-dir", default=None, help="BPE folder, GPT-2 or SentencePiece (default: the packaged GPT-2 files)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--question", default="what does the image describe?")
    parser.add_argument("--steps", type=int, default=8, help="greedy decoding steps")
    opts = parser.parse_args(argv)

    start = time.time()
    extra = [f"--bpe-dir={opts.bpe_dir}"] if opts.bpe_dir else []
    model, task, args = build_from_argv(["DATA", "--task=ofa", f"--arch={opts.arch}", *BIOMEDGPT_FLAGS, *extra])
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"[1/4] built {opts.arch} through fairseq's parser: {params:,} parameters, "
          f"{len(model.state_dict())} state-dict entries, dictionary {len(task.source_dictionary):,} symbols")

    dictionary = task.source_dictionary
    ids = dictionary.encode_line(task.bpe.encode(" " + opts.question), add_if_not_exist=False, append_eos=False)
    src = torch.cat([torch.tensor([dictionary.bos()]), ids.long(), torch.tensor([dictionary.eos()])])[None]
    image = torch.randn(1, 3, opts.image_size, opts.image_size, generator=torch.Generator().manual_seed(0))
    net_input = {"src_tokens": src, "src_lengths": torch.tensor([src.size(1)]), "patch_images": image,
                 "patch_masks": torch.tensor([True])}
    with torch.no_grad():
        tokens, step_logits = greedy_decode(model, net_input, opts.steps, no_repeat=True)
        full, _ = model(**net_input, prev_output_tokens=tokens[:, :-1])
    encoder_len = (opts.image_size // 16) ** 2 + src.size(1)
    gap = (full.float() - step_logits).abs().max().item()
    agree = gap < 1e-3
    print(f"[2/4] forward: image {opts.image_size}px + {src.size(1)} text tokens -> encoder length {encoder_len}, "
          f"logits {tuple(full.shape)}")
    print(f"[3/4] greedy incremental decoding ({opts.steps} steps, untrained weights): {tokens[0].tolist()}; "
          f"max |incremental - full forward| logit difference {gap:.2e}")

    from fairseq import checkpoint_utils
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "checkpoint.pt")
        save_released_layout(model, args, path)
        models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([path])
        same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), models[0].state_dict().values()))
    print(f"[4/4] saved a released-layout checkpoint and reloaded it with load_model_ensemble_and_task: "
          f"weights identical = {same}")
    print(f"done in {time.time() - start:.1f} s (attention kernel: "
          f"{__import__('biomedgpt').models.get_attention_impl()}, threads: {torch.get_num_threads()})")
    return 0 if same and agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
