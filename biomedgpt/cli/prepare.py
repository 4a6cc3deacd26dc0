"""`biomedgpt-prepare`: build BiomedGPT's TSV files from raw datasets.

    biomedgpt-prepare vqa-rad --root VQA_RAD/ --out data/vqa-rad
    biomedgpt-prepare medmnist --root MedMNIST/ --out data/medmnist --subset blood --subset path
    biomedgpt-prepare folder-classify --root my_images/ --out data/mine      # ROOT/<class>/<image>
    biomedgpt-prepare pretrain-images --root chexpert/ --out data/pretrain --mid

Each split is written to `<file>.tmp` and renamed when complete. A bad record (missing image, malformed JSON
line, missing field, ...) stops with a one-line error naming the file and the item (exit code 1), or with
`--skip-invalid` is left out and counted. `biomedgpt-prepare <dataset> --help` shows the raw layout expected.
"""
import argparse
import sys
from typing import List, Optional

from ..data.errors import DataError

PROG = "biomedgpt-prepare"
FOLDER_COMMANDS = {
    "folder-classify": "image folder with class sub-folders, or a CSV of path,label[,split] -> image_classify TSVs",
    "folder-caption": "CSV of path,caption[,split] -> caption TSVs",
    "pretrain-images": "image / DICOM folder -> images.tsv (id, base64; background-cropped 256x256), the input "
                       "of biomedgpt-image-codes --with-image",
}


def _common(parser: argparse.ArgumentParser, images: bool = True, transforms: bool = True) -> None:
    parser.add_argument("--root", required=True, help="the raw dataset folder (or file, where noted)")
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="leave out (and count) bad records instead of stopping at the first")
    parser.add_argument("--strict-text", action="store_true",
                        help="refuse text containing tabs/newlines instead of replacing them by spaces")
    parser.add_argument("--quiet", action="store_true", help="only the summary lines")
    if images:
        parser.add_argument("--image-format", choices=["keep", "png", "jpeg"], default="keep",
                            help="keep: the original bytes of 8-bit PNG/JPEG files, PNG for everything else "
                                 "(DICOM, 16-bit, ...) (default: %(default)s)")
    if images and transforms:
        parser.add_argument("--image-size", type=int, default=None,
                            help="resize every image to SIZE x SIZE (bicubic); default: keep the size")
        parser.add_argument("--crop-background", action="store_true",
                            help="crop to the foreground's bounding box (Otsu threshold) first")


def build_parser() -> argparse.ArgumentParser:
    from ..preprocess.converters import all_converters

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", metavar="DATASET", required=True)
    for module in all_converters():
        sub = commands.add_parser(module.NAME, help=module.HELP, description=f"{module.HELP}.\n\nExpected layout:\n"
                                  f"{module.LAYOUT}", formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(sub, images=module.NAME not in ("meqsum", "mednli"))
        if hasattr(module, "add_arguments"):
            module.add_arguments(sub)
        sub.set_defaults(module=module)
    for name, text in FOLDER_COMMANDS.items():
        sub = commands.add_parser(name, help=text, description=text)
        _common(sub, transforms=name != "pretrain-images")
        if name != "pretrain-images":
            sub.add_argument("--split", choices=["train", "val", "test"], default="train",
                             help="split of the images / rows without one (default: %(default)s)")
        if name != "folder-classify":
            sub.add_argument("--id-prefix", default="", help="prefix of the running row ids (e.g. 1_)")
        if name == "pretrain-images":
            sub.add_argument("--size", type=int, default=256, help="image side (default: %(default)s)")
            sub.add_argument("--no-crop-background", dest="no_crop", action="store_true",
                             help="do not crop the dark background away")
            sub.add_argument("--mid", action="store_true",
                             help="also write images_mid.tsv: the central half (128 x 128), the part masked in "
                                  "pretraining")
        sub.set_defaults(module=None)
    return parser


def run(opts):
    """The conversion the parsed command line asks for; returns its `biomedgpt.preprocess.Report`."""
    from ..preprocess import Options, print_progress
    from ..preprocess import folder
    from ..preprocess.images import ImageOptions

    image = ImageOptions(crop_background=getattr(opts, "crop_background", False),
                         size=getattr(opts, "image_size", None), format=getattr(opts, "image_format", "keep"))
    progress = None if opts.quiet else print_progress
    options = Options(skip_invalid=opts.skip_invalid, strict_text=opts.strict_text, image=image, progress=progress)
    if opts.module is not None:
        extra = {}
        for name in ("subset", "train_fraction", "split_sizes"):
            if hasattr(opts, name):
                extra[name] = getattr(opts, name)
        return opts.module.convert(opts.root, opts.out, options, **extra)
    if opts.command == "folder-classify":
        return folder.convert_classify(opts.root, opts.out, options, split=opts.split)
    if opts.command == "folder-caption":
        return folder.convert_caption(opts.root, opts.out, options, split=opts.split, id_prefix=opts.id_prefix)
    return folder.convert_pretrain_images(opts.root, opts.out, options, size=opts.size,
                                          crop_background=not opts.no_crop, mid=opts.mid, id_prefix=opts.id_prefix)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    try:
        report = run(opts)
    except (DataError, OSError, ValueError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"{PROG} {opts.command}: error: {message}", file=sys.stderr)
        return 1
    for split in report.splits:
        print(split.summary(report.dataset))
        if split.skipped and opts.quiet:
            for error in split.errors:
                print(f"  skipped: {error}", file=sys.stderr)
    for path in report.files:
        print(f"{report.dataset}: wrote {path}")
    print(f"{report.dataset}: {report.written} rows written, {report.skipped} skipped, "
          f"{len(report.splits)} TSV files in {opts.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
