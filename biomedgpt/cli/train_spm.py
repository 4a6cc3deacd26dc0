"""`biomedgpt-train-spm`: train a SentencePiece vocabulary for `--bpe-dir`, from text files or TSV columns.

    biomedgpt-train-spm --input train.tsv --tsv-cols 2,3 --vocab-size 8000 --output-dir spm_bpe --lowercase

writes `spm_bpe/spm.model`, `spm_bpe/spm.vocab` and a fairseq `spm_bpe/dict.txt` (one `piece count` line per
SentencePiece piece, in the model's id order; counts from encoding the training text; `<unk>` and the other
fairseq specials are left out since fairseq adds them itself). `--bpe-dir spm_bpe` then trains with it.

Without `--tsv-cols` every line of the inputs is one training sentence; with it, only the given (0-based,
as `--selected-cols`) tab-separated columns of each row are read, so image (base64) columns are skipped.
Training is deterministic for the same inputs, options and `--num-threads`.
"""
import argparse
import collections
import os
import re
import sys
from typing import Iterator, List, Optional

_WHITESPACE = re.compile(r"\s+")
_OFA_SYMBOL = re.compile(r"<(s|pad|/s|unk|mask|code_\d+|bin_\d+)>")  # fairseq specials and OFA's added symbols
MODEL_PREFIX = "spm"


def parse_cols(value: Optional[str]) -> Optional[List[int]]:
    if value is None or not value.strip():
        return None
    try:
        cols = [int(part) for part in value.split(",")]
    except ValueError:
        raise ValueError(f"--tsv-cols must be comma-separated 0-based column numbers, got {value!r}") from None
    if any(c < 0 for c in cols):
        raise ValueError(f"--tsv-cols must be 0-based column numbers (>= 0), got {value!r}")
    return cols


def iter_sentences(paths: List[str], cols: Optional[List[int]], lowercase: bool = False) -> Iterator[str]:
    """The training sentences: whole lines, or the given columns of each TSV row; whitespace collapsed."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if cols is None:
                    texts = [line]
                else:
                    fields = line.split("\t")
                    if not line.strip():
                        continue
                    if max(cols) >= len(fields):
                        raise ValueError(f"{path}:{lineno}: row has {len(fields)} tab-separated columns, "
                                         f"--tsv-cols asks for column {max(cols)}")
                    texts = [fields[c] for c in cols]
                for text in texts:
                    text = _WHITESPACE.sub(" ", text).strip()
                    if text:
                        yield text.lower() if lowercase else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biomedgpt-train-spm",
        description="Train a SentencePiece model + fairseq dict.txt usable as --bpe-dir (from-scratch training).")
    parser.add_argument("--input", nargs="+", required=True, metavar="FILE",
                        help="plain-text files (one sentence a line) or, with --tsv-cols, TSV files")
    parser.add_argument("--tsv-cols", default=None, metavar="COLS",
                        help="read only these comma-separated 0-based columns of each TSV row (e.g. 2,3)")
    parser.add_argument("--vocab-size", type=int, required=True,
                        help="SentencePiece vocabulary size (including <unk>; dict.txt gets one line fewer)")
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="where spm.model, spm.vocab, dict.txt go")
    parser.add_argument("--soft-vocab-limit", action="store_true",
                        help="treat --vocab-size as an upper bound (small corpora may not have that many pieces)")
    parser.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    parser.add_argument("--character-coverage", type=float, default=1.0,
                        help="share of characters the model covers (1.0: all; rarer ones become <unk>)")
    parser.add_argument("--lowercase", action="store_true",
                        help="lowercase the training text (the caption/VQA tasks lowercase their text)")
    parser.add_argument("--input-sentence-size", type=int, default=0,
                        help="train on at most this many sentences, sampled with --seed (0: all)")
    parser.add_argument("--seed", type=int, default=1, help="seed of that sampling")
    parser.add_argument("--num-threads", type=int, default=1,
                        help="trainer threads (the result depends on this number; fixed default for reproducibility)")
    return parser


def train(inputs: List[str], output_dir: str, vocab_size: int, tsv_cols: Optional[List[int]] = None,
          model_type: str = "unigram", character_coverage: float = 1.0, lowercase: bool = False,
          input_sentence_size: int = 0, seed: int = 1, num_threads: int = 1, hard_vocab_limit: bool = True) -> dict:
    """Train and write `spm.model`, `spm.vocab`, `dict.txt` under `output_dir`; returns a summary dict."""
    import sentencepiece as spm

    for path in inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--input: no such file {path}")
    for name in ("encoder.json", "vocab.bpe"):
        if os.path.exists(os.path.join(output_dir, name)):
            raise ValueError(f"--output-dir {output_dir} holds GPT-2 BPE files ({name}); a SentencePiece dict.txt "
                             f"there would not match them: choose another folder")
    os.makedirs(output_dir, exist_ok=True)
    text_path = os.path.join(output_dir, MODEL_PREFIX + ".train.txt")
    num_sentences = 0
    try:
        with open(text_path, "w", encoding="utf-8") as f:
            for sentence in iter_sentences(inputs, tsv_cols, lowercase):
                f.write(sentence + "\n")
                num_sentences += 1
        if num_sentences == 0:
            raise ValueError(f"--input {' '.join(inputs)}: no text found"
                             + (f" in columns {tsv_cols}" if tsv_cols is not None else ""))
        if hasattr(spm, "set_random_generator_seed"):
            spm.set_random_generator_seed(seed)
        spm.SentencePieceTrainer.train(
            input=text_path, model_prefix=os.path.join(output_dir, MODEL_PREFIX), vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            # fairseq's Dictionary adds <s>/<pad>/</s>/<unk> itself: no control pieces in the model, only <unk>
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            normalization_rule_name="nmt_nfkc", add_dummy_prefix=True, remove_extra_whitespaces=True,
            byte_fallback=False, max_sentence_length=1 << 16,
            input_sentence_size=input_sentence_size, shuffle_input_sentence=input_sentence_size > 0,
            hard_vocab_limit=hard_vocab_limit,
            num_threads=num_threads, minloglevel=2)

        sp = spm.SentencePieceProcessor(model_file=os.path.join(output_dir, MODEL_PREFIX + ".model"))
        counts = collections.Counter()
        with open(text_path, encoding="utf-8") as f:
            batch = []
            for line in f:
                batch.append(line.rstrip("\n"))
                if len(batch) == 10000:
                    counts.update(i for ids in sp.encode(batch) for i in ids)
                    batch = []
            if batch:
                counts.update(i for ids in sp.encode(batch) for i in ids)
    finally:
        if os.path.exists(text_path):
            os.remove(text_path)

    symbols = []
    for i in range(sp.get_piece_size()):
        if sp.is_unknown(i) or sp.is_control(i) or sp.is_unused(i):
            continue
        piece = sp.id_to_piece(i)
        if _OFA_SYMBOL.fullmatch(piece) or _WHITESPACE.search(piece):
            continue  # already a symbol of the OFA dictionary, or would be split by fairseq's tokenizer
        symbols.append((piece, counts.get(i, 0)))
    dict_path = os.path.join(output_dir, "dict.txt")
    with open(dict_path, "w", encoding="utf-8") as f:
        for piece, count in symbols:
            f.write(f"{piece} {count}\n")
    return {
        "model": os.path.join(output_dir, MODEL_PREFIX + ".model"),
        "vocab": os.path.join(output_dir, MODEL_PREFIX + ".vocab"),
        "dict": dict_path,
        "pieces": sp.get_piece_size(),
        "symbols": len(symbols),
        "sentences": num_sentences,
        "tokens": sum(counts.values()),
        "unk_tokens": counts.get(sp.unk_id(), 0),
    }


def main(argv=None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    try:
        cols = parse_cols(opts.tsv_cols)
        summary = train(opts.input, opts.output_dir, opts.vocab_size, cols, opts.model_type,
                        opts.character_coverage, opts.lowercase, opts.input_sentence_size, opts.seed,
                        opts.num_threads, hard_vocab_limit=not opts.soft_vocab_limit)
    except (ValueError, FileNotFoundError) as exc:
        print(f"biomedgpt-train-spm: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # SentencePiece's own errors, e.g. "Vocabulary size too high (N) ... <= M"
        print(f"biomedgpt-train-spm: SentencePiece training failed: {exc}", file=sys.stderr)
        return 1
    print(f"read {summary['sentences']:,} sentences from {', '.join(opts.input)}"
          + (f" (columns {opts.tsv_cols})" if cols is not None else ""))
    print(f"wrote {summary['model']} ({opts.model_type}, {summary['pieces']:,} pieces)")
    print(f"wrote {summary['vocab']}")
    print(f"wrote {summary['dict']} ({summary['symbols']:,} symbols; the training text encodes to "
          f"{summary['tokens']:,} tokens, {summary['unk_tokens']:,} of them <unk>)")
    print(f"OFA dictionary with the default --code-dict-size 8192 --num-bins 1000: "
          f"{4 + summary['symbols'] + 1 + 8192 + 1000:,} symbols")
    print(f"use it with: --bpe-dir {opts.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
