"""Text normalisation of the reference (`pre_caption`, `pre_question`) and token encoding helpers."""
import re
import string
from typing import Optional

import torch

_LEADING = ",.!?*#:;~"
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def _normalise(text: str, max_words: Optional[int]) -> str:
    text = re.sub(r"\s{2,}", " ", text.lower().lstrip(_LEADING).replace("-", " ").replace("/", " "))
    text = text.rstrip("\n").strip(" ")
    words = text.split(" ")
    if max_words is not None and len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def pre_caption(caption: str, max_words: Optional[int] = None) -> str:
    """Lowercase, strip leading punctuation, `-`/`/` to spaces, `<person>` -> person, collapse spaces, truncate."""
    return _normalise(caption.replace("<person>", "person"), max_words)


def pre_question(question: str, max_words: Optional[int] = None) -> str:
    """Like `pre_caption` for questions (keeps the question mark handling to the caller)."""
    return _normalise(question, max_words)


def strip_punctuation(text: str) -> str:
    return text.translate(_PUNCT_TABLE).strip()


class TextEncoder:
    """BPE + dictionary: `encode(" text")` -> LongTensor of ids (no eos), optionally truncated."""

    def __init__(self, bpe, dictionary):
        self.bpe = bpe
        self.dictionary = dictionary
        self.bos, self.eos, self.pad = dictionary.bos(), dictionary.eos(), dictionary.pad()

    def encode(self, text: str, length: Optional[int] = None, append_bos: bool = False,
               append_eos: bool = False, use_bpe: bool = True) -> torch.Tensor:
        pieces = self.bpe.encode(text) if use_bpe else text
        ids = self.dictionary.encode_line(pieces, add_if_not_exist=False, append_eos=False).long()
        if length is not None:
            ids = ids[:length]
        if append_bos:
            ids = torch.cat([torch.tensor([self.bos]), ids])
        if append_eos:
            ids = torch.cat([ids, torch.tensor([self.eos])])
        return ids

    def decode(self, ids) -> str:
        """Ids -> text (specials, pad and BPE undone)."""
        ids = [int(i) for i in ids if int(i) not in (self.bos, self.eos, self.pad)]
        return self.bpe.decode(self.dictionary.string(torch.tensor(ids, dtype=torch.long))).strip() if ids else ""
