"""BART-style whole-word span masking for pretraining's text infilling (REFERENCE §3.8).

A fraction `mask_ratio` of the words (rounded up) is covered by spans whose lengths (in words) are drawn from
Poisson(`poisson_lambda`) (`mask_length="span-poisson"`) or are all 1 (`"word"`). Each span is then replaced:
with probability `keep_ratio` it stays as it is, with `random_ratio` by random token(s) from `random_range`,
otherwise by `<mask>`; `replace_length` 1 puts one symbol for the whole span, -1 one per token, 0 deletes it.
Spans of length 0 are dropped (BART turns them into insertions; the reference's default ratios never rely on it).

All randomness comes from the `numpy.random.Generator` passed in, so a sample is a function of its seed.
"""
import math
from typing import List, Sequence, Tuple

import numpy as np
import torch

Span = Tuple[int, int]  # (first word, number of words)


def word_bounds(word_starts: Sequence[bool]) -> List[Tuple[int, int]]:
    """Token ranges `[start, end)` of the words, given a flag per token that is True where a word begins
    (a first token that is not flagged still starts the first word)."""
    starts = [i for i, flag in enumerate(word_starts) if flag or i == 0]
    return [(s, e) for s, e in zip(starts, starts[1:] + [len(word_starts)])]


def choose_spans(num_words: int, mask_ratio: float, rng: np.random.Generator, poisson_lambda: float = 3.0,
                 mask_length: str = "span-poisson") -> List[Span]:
    """Spans covering `ceil(num_words * mask_ratio)` words in total (before any overlap), at distinct random
    start words, sorted by start."""
    budget = int(math.ceil(num_words * mask_ratio))
    if budget == 0 or num_words == 0:
        return []
    if mask_length == "word":
        lengths = [1] * budget
    elif mask_length == "span-poisson":
        lengths = []
        while sum(lengths) < budget:
            lengths.append(int(rng.poisson(poisson_lambda)))
        lengths[-1] -= sum(lengths) - budget
        lengths = [n for n in lengths if n > 0]
    else:
        raise ValueError(f"--mask-length must be 'span-poisson' or 'word', got {mask_length!r}")
    lengths = lengths[:num_words]
    starts = np.sort(rng.choice(num_words, size=len(lengths), replace=False))
    return [(int(s), n) for s, n in zip(starts, lengths)]


def apply_spans(ids: torch.Tensor, bounds: List[Tuple[int, int]], spans: List[Span], mask_id: int,
                rng: np.random.Generator, replace_length: int = 1, random_ratio: float = 0.0,
                keep_ratio: float = 0.0, random_range: Tuple[int, int] = (4, 50265)) -> torch.Tensor:
    """`ids` with each (merged) span of words replaced as described in the module docstring."""
    masked_words = np.zeros(len(bounds), dtype=bool)
    for start, length in spans:
        masked_words[start: start + length] = True
    out: List[int] = []
    word = 0
    while word < len(bounds):
        if not masked_words[word]:
            out.extend(ids[bounds[word][0]: bounds[word][1]].tolist())
            word += 1
            continue
        end = word
        while end < len(bounds) and masked_words[end]:
            end += 1
        tokens = ids[bounds[word][0]: bounds[end - 1][1]].tolist()
        draw = rng.random()
        if draw < keep_ratio:
            out.extend(tokens)
        else:
            count = {1: 1, -1: len(tokens), 0: 0}.get(replace_length)
            if count is None:
                raise ValueError(f"--replace-length must be -1, 0 or 1, got {replace_length}")
            if draw < keep_ratio + random_ratio:
                out.extend(int(t) for t in rng.integers(random_range[0], random_range[1], size=count))
            else:
                out.extend([mask_id] * count)
        word = end
    return torch.tensor(out, dtype=torch.long)


def mask_spans(ids: torch.Tensor, word_starts: Sequence[bool], mask_id: int, rng: np.random.Generator,
               mask_ratio: float = 0.3, poisson_lambda: float = 3.0, mask_length: str = "span-poisson",
               replace_length: int = 1, random_ratio: float = 0.0, keep_ratio: float = 0.0,
               random_range: Tuple[int, int] = (4, 50265)) -> torch.Tensor:
    """Whole-word span masking of `ids` (see the module docstring)."""
    bounds = word_bounds(word_starts)
    spans = choose_spans(len(bounds), mask_ratio, rng, poisson_lambda, mask_length)
    return apply_spans(ids, bounds, spans, mask_id, rng, replace_length, random_ratio, keep_ratio, random_range)
