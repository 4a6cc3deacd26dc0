"""Probe the demo's ResNet trunk pre-training (biomedgpt/demo/trunk.py): train it on the easy-VQA training
images' colour and shape and print one JSON line: image size, updates, seconds, validation accuracy.

    OMP_NUM_THREADS=1 python bench/demo_trunk_probe.py --image-size 32 --updates 1000 --out trunk32.pt

The saved trunk can be given to bench/demo_recipe_probe.py (`-- --resnet-model-path trunk32.pt`). Used to
choose the demo's recipe (BENCHMARKS.md, "The demo recipe").
"""
import argparse
import json
import time

import torch

from biomedgpt.demo.easy_vqa_data import easy_vqa_questions, split_train
from biomedgpt.demo.trunk import pretrain_trunk


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", required=True, help="where to save the trunk's state dict")
    opts = parser.parse_args()
    train, valid = split_train(easy_vqa_questions()[0])
    started = time.time()
    result = pretrain_trunk(train, valid, opts.out, opts.image_size, opts.updates, batch_size=opts.batch_size,
                            lr=opts.lr, log_every=max(1, opts.updates // 10))
    print(json.dumps({**result, "image_size": opts.image_size, "updates": opts.updates, "lr": opts.lr,
                      "batch_size": opts.batch_size, "threads": torch.get_num_threads(),
                      "seconds": round(time.time() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
