"""`biomedgpt-ask`: one question about one or more images, answered by a checkpoint, on CPU or GPU.

    biomedgpt-ask --path vqa.pt --image scan.png --question "is there a fracture?"
    biomedgpt-ask --path caption.pt --image a.png b.dcm          # captions / classes: no question
"""
import argparse
import json
import sys

from ..data.errors import DataError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True, help="checkpoint (.pt) of a vqa_gen, caption or image_classify run")
    parser.add_argument("--image", required=True, nargs="+", help="image file(s): PNG, JPEG, DICOM, ...")
    parser.add_argument("--question", default=None, help="the question (VQA checkpoints)")
    parser.add_argument("--overrides", default="{}",
                        help='JSON task/model overrides, e.g. \'{"ans2label_file": "answers.pkl"}\'')
    parser.add_argument("--beam", type=int, default=5, help="beam size for generated answers")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="half-precision weights (GPUs)")
    precision.add_argument("--bf16", action="store_true", help="bfloat16 weights (recent GPUs, CPUs with AMX/AVX512-bf16)")
    opts = parser.parse_args(argv)

    import torch

    from ..inference import load

    try:
        overrides = json.loads(opts.overrides)
    except json.JSONDecodeError as exc:
        parser.error(f"--overrides is not valid JSON: {exc}")
    model = load(opts.path, overrides=overrides, device="cpu" if opts.cpu else None, beam=opts.beam,
                 dtype=torch.float16 if opts.fp16 else torch.bfloat16 if opts.bf16 else None)
    try:
        answers = model.answer_many(opts.image, [opts.question] * len(opts.image))
    except (OSError, DataError, ValueError) as exc:
        print(f"biomedgpt-ask: {exc}", file=sys.stderr)
        return 2
    for image, (answer, probability) in zip(opts.image, answers):
        print(f"{image}\t{answer}\t{probability:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
