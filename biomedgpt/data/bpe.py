"""The text tokenizer behind `--bpe-dir`: GPT-2 byte-level BPE or a SentencePiece model, chosen by the files.

`--bpe-dir DIR` holds either

* the GPT-2 files of the released models: `encoder.json`, `vocab.bpe` and `dict.txt` (symbols = GPT-2 ids), or
* a SentencePiece model: `spm.model` and `dict.txt` (symbols = SentencePiece pieces), as written by
  `biomedgpt-train-spm`, for training from scratch with a vocabulary of one's own.

Both tokenizers give the same interface (fairseq's BPE objects): `encode(text)` -> space-separated symbols of
`dict.txt`, `decode(symbols)` -> text, `is_beginning_of_word(symbol)`. `decode` also accepts the symbols the OFA
dictionary adds (`<bin_k>`, `<code_k>`) and keeps them as words, so `fairseq-generate` can print boxes and codes.
"""
import logging
import os
import re
from typing import Dict, Tuple

from .dictionary import resolve_bpe_dir

logger = logging.getLogger(__name__)

GPT2 = "gpt2"
SENTENCEPIECE = "sentencepiece"
BPE_FILES: Dict[str, Tuple[str, ...]] = {
    GPT2: ("encoder.json", "vocab.bpe", "dict.txt"),
    SENTENCEPIECE: ("spm.model", "dict.txt"),
}
SPM_MODEL = "spm.model"


def _describe(kind: str) -> str:
    return " + ".join(BPE_FILES[kind])


def detect_bpe_kind(bpe_dir=None) -> str:
    """`"gpt2"` or `"sentencepiece"`, from the files present in `bpe_dir` (None: the packaged GPT-2 files).

    Raises FileNotFoundError (naming the folder and the expected files) when neither set is complete, and
    ValueError when both are (they would share one `dict.txt`, so one of them cannot match it).
    """
    bpe_dir = resolve_bpe_dir(bpe_dir)
    if not os.path.isdir(bpe_dir):
        raise FileNotFoundError(f"--bpe-dir {bpe_dir}: no such folder (expected either the GPT-2 files "
                                f"{_describe(GPT2)} or the SentencePiece files {_describe(SENTENCEPIECE)})")
    complete = [kind for kind, names in BPE_FILES.items()
                if all(os.path.isfile(os.path.join(bpe_dir, name)) for name in names)]
    if len(complete) == 1:
        return complete[0]
    if len(complete) > 1:
        raise ValueError(f"--bpe-dir {bpe_dir} holds both the GPT-2 files ({_describe(GPT2)}) and a SentencePiece "
                         f"model ({SPM_MODEL}); they cannot share one dict.txt: keep only one set in the folder")
    present = sorted(name for names in BPE_FILES.values() for name in set(names)
                     if os.path.isfile(os.path.join(bpe_dir, name)))
    raise FileNotFoundError(
        f"--bpe-dir {bpe_dir}: neither the GPT-2 files ({_describe(GPT2)}) nor the SentencePiece files "
        f"({_describe(SENTENCEPIECE)}) are all there (found: {', '.join(present) or 'none of them'}); "
        f"`biomedgpt-train-spm` writes the SentencePiece set")


def _dict_symbols(path: str):
    """Symbols of a fairseq `dict.txt` (`symbol count [#fairseq:overwrite]` lines)."""
    symbols = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            fields = line.rsplit(" ", 1)
            if fields[-1] == "#fairseq:overwrite" and len(fields) == 2:
                fields = fields[0].rsplit(" ", 1)
            symbols.append(fields[0])
    return symbols


def _check_sentencepiece_dict(sp, dict_path: str, bpe_dir: str) -> None:
    """Error when `dict.txt` shares no piece with `spm.model` (e.g. a GPT-2 dict.txt); warn on a partial match."""
    known = set(_dict_symbols(dict_path))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
              if not (sp.is_unknown(i) or sp.is_control(i) or sp.is_unused(i))]
    missing = [p for p in pieces if p not in known]
    if pieces and len(missing) == len(pieces):
        raise ValueError(f"--bpe-dir {bpe_dir}: dict.txt holds none of the pieces of {SPM_MODEL} (is it the GPT-2 "
                         f"dict.txt?); write a matching one with `biomedgpt-train-spm`")
    if missing:
        logger.warning(f"--bpe-dir {bpe_dir}: {len(missing)} of the {len(pieces)} pieces of {SPM_MODEL} are not in "
                       f"dict.txt and will be encoded as <unk> (e.g. {missing[:5]})")


ADDED_SYMBOL = re.compile(r"<(?:bin|code)_\d+>")


def _decode_keeping_added_symbols(decode, symbols: str) -> str:
    """`decode` for runs of BPE symbols; `<bin_k>` / `<code_k>` are kept as space-separated words."""
    pieces, run = [], []
    for symbol in symbols.split():
        if ADDED_SYMBOL.fullmatch(symbol):
            if run:
                pieces.append(decode(" ".join(run)).strip())
                run = []
            pieces.append(symbol)
        else:
            run.append(symbol)
    if run:
        pieces.append(decode(" ".join(run)).strip())
    return " ".join(p for p in pieces if p)


def build_bpe(bpe_dir=None):
    """The tokenizer of `bpe_dir` (see `detect_bpe_kind`): fairseq's `GPT2BPE` or `SentencepieceBPE`.

    The returned object has `encode(text) -> "sym sym ..."` (symbols of `dict.txt`), `decode(str) -> text`,
    `is_beginning_of_word(sym) -> bool`, and `kind` ("gpt2" / "sentencepiece").
    """
    bpe_dir = resolve_bpe_dir(bpe_dir)
    kind = detect_bpe_kind(bpe_dir)
    if kind == GPT2:
        from fairseq.data.encoders.gpt2_bpe import GPT2BPE, GPT2BPEConfig

        bpe = GPT2BPE(GPT2BPEConfig(gpt2_encoder_json=os.path.join(bpe_dir, "encoder.json"),
                                    gpt2_vocab_bpe=os.path.join(bpe_dir, "vocab.bpe")))
    else:
        from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig

        # SentencePiece adds the word-boundary mark itself and drops leading/repeated spaces, so " what ..."
        # (the prompts' leading space) and "what ..." give the same pieces; decode() turns the marks back
        # into spaces and strips the ends.
        bpe = SentencepieceBPE(SentencepieceConfig(sentencepiece_model=os.path.join(bpe_dir, SPM_MODEL)))
        _check_sentencepiece_dict(bpe.sp, os.path.join(bpe_dir, "dict.txt"), bpe_dir)
    bpe.kind = kind
    plain_decode = bpe.decode
    bpe.decode = lambda symbols: (_decode_keeping_added_symbols(plain_decode, symbols)
                                  if ADDED_SYMBOL.search(symbols) else plain_decode(symbols))
    return bpe
