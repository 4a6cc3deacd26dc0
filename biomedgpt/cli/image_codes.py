"""`biomedgpt-image-codes`: VQ-GAN codes of the images in a TSV, for BiomedGPT pretraining (resumable).

    biomedgpt-image-codes --input images.tsv --output codes.tsv --vq-ckpt vqgan_gumbel_f8_8192/last.ckpt

The reference's `generate_code.py` flow: base64 image -> RGB -> Resize((S, S), LANCZOS) (S = --code-image-size,
128) -> [-1, 1] -> GumbelVQ codes (argmax; --sample for the reference's Gumbel sampling) -> row-major, S/8 * S/8
codes (256 for 128), space-separated. Layouts, chosen by the number of --selected-cols:

    2 columns  image_id, base64                    -> image_id <TAB> codes
    4 columns  pair_id, image_id, base64, text     -> pair_id <TAB> image_id <TAB> text <TAB> codes
    2 columns with --with-image                    -> image_id <TAB> base64 <TAB> codes   (pretraining image.tsv)

--with-image writes the `image.tsv` that pretraining's image infilling reads: the image as a 2S x 2S picture
(the input base64 unchanged when it already is 2S x 2S, else resized with BICUBIC and re-encoded as PNG) and the
codes of its S x S centre (pixels S/2 .. 3S/2, the region the pretraining task masks: 64..192 for S = 128).

Resuming: when --output exists, a trailing partial line is cut, the complete lines are counted and that many
input rows are skipped; each batch is flushed and fsync'ed, so rerunning after a crash gives the same file as an
uninterrupted run. --overwrite starts afresh. Rows skipped with --skip-invalid-rows are listed (row index,
line, problem) in `<output>.skipped`, written before the batch's codes so that resuming stays aligned.
Computation is plain fp32 (TF32 is switched off on CUDA unless --allow-tf32). Codes are deterministic up to float
rounding: on GPUs a different batch composition (e.g. after a resume) can flip a near-tie argmax. --sample noise is
seeded per input row (--seed), so it does not depend on batching or resuming either.
"""
import argparse
import base64
import contextlib
import io
import logging
import os
import sys
from typing import List, Optional, Tuple

import torch
from PIL import Image
from tqdm import tqdm

from ..compat import CheckpointReadError, UnsafeCheckpointError
from ..data.errors import DataError
from ..data.image import decode_image
from ..data.tsv import IndexedTSV, parse_selected_cols
from ..vqgan import CheckpointMismatchError, GumbelVQ, codes_from_logits, default_config_path, images_to_batch

PROG = "biomedgpt-image-codes"
SKIPPED_SUFFIX = ".skipped"
_CHUNK = 1 << 24


class ResumeError(ValueError):
    """The existing output does not continue the given input."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--input", "--file", required=True, metavar="TSV", help="input TSV with base64 images")
    parser.add_argument("--output", "--outputs", required=True, metavar="TSV", help="output TSV (appended to)")
    parser.add_argument("--selected-cols", default="0,1", metavar="COLS",
                        help="2 columns (image_id,base64) or 4 (pair_id,image_id,base64,text); default 0,1")
    parser.add_argument("--vq-config", default=None, metavar="YAML",
                        help="taming model yaml (default: the vqgan_gumbel_f8_8192 config shipped with biomedgpt)")
    parser.add_argument("--vq-ckpt", default=None, metavar="CKPT", help="the released last.ckpt (or a state dict)")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights seeded with --seed, for testing only: the codes are meaningless")
    parser.add_argument("--code-image-size", type=int, default=128, help="images are resized to S x S (128)")
    parser.add_argument("--with-image", action="store_true",
                        help="write id, base64 of the 2S x 2S image, codes of its S x S centre (pretraining image.tsv)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--sample", action="store_true",
                        help="reference-faithful Gumbel sampling instead of the argmax (noise seeded per row)")
    parser.add_argument("--allow-tf32", action="store_true",
                        help="on CUDA, let convolutions use TF32 (faster; PyTorch's default, but not exact fp32)")
    parser.add_argument("--seed", type=int, default=1, help="seed of --random-init and --sample (1)")
    parser.add_argument("--overwrite", action="store_true", help="start a fresh output instead of resuming")
    parser.add_argument("--skip-invalid-rows", action="store_true",
                        help="skip rows whose image cannot be read (listed in OUTPUT.skipped) instead of stopping")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


# ------------------------------------------------------------------------------------------------ resumable output
def trim_and_count(path: str) -> Tuple[int, bytes]:
    """Cut a trailing partial line off `path`; return (complete lines, the last complete line without newline)."""
    count, last, prev, position = 0, -1, -1, 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            found = chunk.count(b"\n")
            if found:
                end = chunk.rindex(b"\n")
                prev = position + chunk.rindex(b"\n", 0, end) if found > 1 else last
                last = position + end
                count += found
            position += len(chunk)
    if position != last + 1:
        os.truncate(path, last + 1)
    if count == 0:
        return 0, b""
    with open(path, "rb") as handle:
        handle.seek(prev + 1)
        return count, handle.read(last - prev - 1)


def read_skipped(path: str) -> dict:
    """`{row index: line}` of the rows an earlier run skipped (`<output>.skipped`)."""
    if not os.path.exists(path):
        return {}
    trim_and_count(path)
    skipped = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split("\t", 2)
            skipped[int(fields[0])] = fields[1]
    return skipped


def resume_row(done: int, skipped: dict, total: int) -> int:
    """The input row after the `done`-th row that produced output (rows in `skipped` produced none)."""
    row = produced = 0
    while produced < done:
        if row >= total:
            raise ResumeError(f"the output already has {done} rows but the input has only "
                              f"{total - len(skipped)} usable rows")
        if row not in skipped:
            produced += 1
        row += 1
    return row


def _sync(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())


# ------------------------------------------------------------------------------------------------ rows
class Layout:
    """How input columns map to the output row."""

    def __init__(self, n_cols: int, with_image: bool, size: int):
        if n_cols not in (2, 4):
            raise ValueError(f"--selected-cols must name 2 columns (image_id,base64) or 4 "
                             f"(pair_id,image_id,base64,text), got {n_cols}")
        if with_image and n_cols != 2:
            raise ValueError("--with-image needs the 2-column input (image_id,base64)")
        self.n_cols, self.with_image, self.size = n_cols, with_image, size
        self.names = ["image_id", "image"] if n_cols == 2 else ["pair_id", "image_id", "image", "text"]
        self.image_pos = self.names.index("image")
        self.out_cols = 3 if with_image else (2 if n_cols == 2 else 4)

    def prepare(self, fields: List[str], image):
        """(image to encode, output fields before the codes) of one row."""
        if self.with_image:
            full = 2 * self.size
            text = fields[1].strip()
            if image.size != (full, full):
                image = image.resize((full, full), Image.BICUBIC)
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                text = base64.b64encode(buffer.getvalue()).decode("ascii")
            half = self.size // 2
            return image.crop((half, half, half + self.size, half + self.size)), [fields[0], text]
        if self.n_cols == 2:
            return image, [fields[0]]
        return image, [fields[0], fields[1], fields[3]]


def _read_row(tsv: IndexedTSV, layout: Layout, index: int):
    fields = tsv[index]
    try:
        image = decode_image(fields[layout.image_pos], tsv.path, None, "image")
    except DataError as exc:
        raise tsv.error(index, exc.problem, layout.image_pos) from None
    return layout.prepare(fields, image)


# ------------------------------------------------------------------------------------------------ main
def _load_model(opts, config: str, device: torch.device):
    if opts.random_init:
        torch.manual_seed(opts.seed)
        model = GumbelVQ.from_config(config)
    else:
        model = GumbelVQ.from_config(config).load_checkpoint(opts.vq_ckpt)
    return model.to(device).eval()


def _encode(model, images, size: int, device, sample: bool, seed: int, rows: List[int]) -> List[str]:
    logits = model.code_logits(images_to_batch(images, size, device))
    if sample:
        codes = []
        for i, row in enumerate(rows):
            generator = torch.Generator(device=logits.device)
            generator.manual_seed(((seed & 0x7FFFFFFF) << 32) + row)
            codes.append(codes_from_logits(logits[i:i + 1], sample=True, generator=generator))
        codes = torch.cat(codes)
    else:
        codes = codes_from_logits(logits)
    return [" ".join(map(str, item)) for item in codes.flatten(1).cpu().tolist()]


def _warn_random(opts) -> None:
    if opts.random_init:
        print(f"{PROG}: WARNING: --random-init: the VQ-GAN has RANDOM weights (seed {opts.seed}); these codes are "
              "MEANINGLESS and only good for testing", file=sys.stderr)


def run(opts) -> int:
    cols = parse_selected_cols(opts.selected_cols) or [0, 1]
    layout = Layout(len(cols), opts.with_image, opts.code_image_size)
    config = opts.vq_config or default_config_path()
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tsv = IndexedTSV(opts.input, selected_cols=cols, column_names=layout.names, cache_index=False)
    total = len(tsv)

    skipped_path = opts.output + SKIPPED_SUFFIX
    if opts.overwrite:
        for path in (opts.output, skipped_path):
            if os.path.exists(path):
                os.remove(path)
    done, last_line = trim_and_count(opts.output) if os.path.exists(opts.output) else (0, b"")
    skipped = read_skipped(skipped_path)
    start = resume_row(done, skipped, total)
    if done:
        fields = last_line.decode("utf-8", "replace").split("\t")
        expected_id = tsv[start - 1][0]
        if len(fields) != layout.out_cols or fields[0] != expected_id:
            raise ResumeError(f"{opts.output} does not continue {opts.input}: its last row "
                              f"({len(fields)} columns, id {fields[0][:40]!r}) is not the output of input row "
                              f"{start} (id {expected_id[:40]!r}); use --overwrite to start afresh")
        print(f"{PROG}: {opts.output} has {done} rows; resuming at input row {start + 1} of {total}", file=sys.stderr)

    if start >= total:
        print(f"{PROG}: {opts.output} is complete ({done} rows); nothing to do", file=sys.stderr)
        return 0
    _warn_random(opts)
    model = _load_model(opts, config, device)
    if device.type == "cuda" and not opts.allow_tf32:  # the reference's numbers are plain fp32
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    written, newly_skipped = 0, 0
    with open(opts.output, "ab") as out, tqdm(total=total, initial=start, unit="img", file=sys.stderr,
                                               disable=opts.quiet, dynamic_ncols=True) as bar:
        row = start
        while row < total:
            images, heads, rows, skip_lines = [], [], [], []
            first, error = row, None
            while row < total and len(images) < opts.batch_size:
                if opts.skip_invalid_rows and row in skipped:
                    row += 1
                    continue
                try:
                    image, head = _read_row(tsv, layout, row)
                except DataError as exc:
                    if not opts.skip_invalid_rows:
                        error = exc  # stop after writing the rows before it
                        break
                    problem = " ".join(str(exc).split())
                    skip_lines.append(f"{row}\t{exc.line}\t{problem}\n")
                    print(f"{PROG}: skipped: {problem}", file=sys.stderr)
                    row += 1
                    continue
                images.append(image)
                heads.append(head)
                rows.append(row)
                row += 1
            if skip_lines:  # before the codes: a crash in between must not shift the resumed rows
                with open(skipped_path, "a", encoding="utf-8") as handle:
                    handle.writelines(skip_lines)
                    _sync(handle)
                newly_skipped += len(skip_lines)
            if images:
                codes = _encode(model, images, layout.size, device, opts.sample, opts.seed, rows)
                lines = ["\t".join(head + [code]) + "\n" for head, code in zip(heads, codes)]
                out.write("".join(lines).encode("utf-8"))
                _sync(out)
                written += len(lines)
            bar.update(row - first)
            if error is not None:
                raise error

    total_skipped = len(skipped) + newly_skipped
    note = f"; {total_skipped} invalid rows skipped (listed in {skipped_path})" if total_skipped else ""
    print(f"{PROG}: wrote {written} rows to {opts.output} ({done + written} in all){note}", file=sys.stderr)
    _warn_random(opts)
    return 0


@contextlib.contextmanager
def _cli_logging():
    """Show the loader's notes (ignored checkpoint entries) on stderr while the command runs; keep PIL's debug
    chatter out (stock fairseq sets the root logger to DEBUG on import). Restored afterwards."""
    vq_logger, pil_logger = logging.getLogger("biomedgpt.vqgan"), logging.getLogger("PIL")
    saved = vq_logger.level, vq_logger.propagate, pil_logger.level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    vq_logger.addHandler(handler)
    vq_logger.setLevel(logging.INFO)
    vq_logger.propagate = False
    pil_logger.setLevel(max(pil_logger.level, logging.INFO))
    try:
        yield
    finally:
        vq_logger.removeHandler(handler)
        vq_logger.setLevel(saved[0])
        vq_logger.propagate = saved[1]
        pil_logger.setLevel(saved[2])


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts.random_init == bool(opts.vq_ckpt):
        parser.error("give --vq-ckpt (the released last.ckpt), or --random-init for testing")
    if not opts.vq_config and default_config_path() is None:
        parser.error("--vq-config is required (the packaged vqgan_gumbel_f8_8192 config is missing)")
    if opts.code_image_size <= 0 or opts.code_image_size % 8:
        parser.error(f"--code-image-size must be a positive multiple of 8, got {opts.code_image_size}")
    if opts.batch_size <= 0:
        parser.error("--batch-size must be positive")
    if opts.device and opts.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {opts.device}: CUDA is not available here")
    if os.path.abspath(opts.input) == os.path.abspath(opts.output):
        parser.error("--output must differ from --input")
    try:
        with _cli_logging():
            return run(opts)
    except (DataError, ResumeError, CheckpointMismatchError, CheckpointReadError, UnsafeCheckpointError,
            FileNotFoundError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
