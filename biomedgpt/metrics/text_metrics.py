"""Text metrics of the caption and summarisation tasks, backed by `pycocoevalcap` and `rouge-score`.

* :func:`cider_d` — CIDEr-D (n = 4, sigma = 6) as the reference's caption validation and SCST reward compute it.
  `pycocoevalcap.cider.CiderScorer` *is* CIDEr-D (clipped tf-idf cosine with the Gaussian length penalty: the
  COCO server's metric, despite the class name) but always takes document frequencies from the references being
  scored. The reference can instead load them from a pickle of training references
  (``{"document_frequency": {ngram tuple: count}, "ref_len": number of images}``); :func:`load_cider_document_frequency`
  reads that file and :func:`cider_d` feeds it to pycocoevalcap's scorer (see :class:`_CiderDScorer`).
* :func:`rouge_scores` — ROUGE-1/2/L recall and F1 in percent with `rouge_score` (Porter stemmer, no aggregation),
  like the reference's `datasets` ROUGE script with ``use_stemmer=True`` and no aggregator.
* Text normalisation: :func:`strip_punctuation` (caption hyps/refs), :func:`bioclean` (offline caption metrics),
  :func:`fix_tokenization` and :func:`gigaword_hypothesis` (summarisation hypotheses).
"""
import functools
import math
import pickle
import re
import string
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from pycocoevalcap.cider.cider_scorer import CiderScorer
from rouge_score import rouge_scorer

from ..data.text import strip_punctuation  # noqa: F401  (re-exported: captions are compared without punctuation)

__all__ = [
    "CiderDocumentFrequency", "load_cider_document_frequency", "cider_d",
    "ROUGE_TYPES", "rouge_scores",
    "strip_punctuation", "bioclean", "fix_tokenization", "gigaword_hypothesis",
]

# --- CIDEr-D ------------------------------------------------------------------------------------------------------


class _Frequencies(dict):
    """n-gram -> document count; an unseen n-gram counts 0 (without being inserted, unlike a defaultdict)."""

    def __missing__(self, key):
        return 0.0


class CiderDocumentFrequency(NamedTuple):
    """Cached CIDEr-D statistics: per-n-gram document counts and the number of documents (images) they came from."""

    document_frequency: Mapping[Tuple[str, ...], float]
    ref_len: float  # number of documents; CIDEr-D uses its log

    @classmethod
    def from_counts(cls, document_frequency: Mapping[Tuple[str, ...], float], ref_len: float):
        if ref_len <= 0:
            raise ValueError(f"ref_len (number of reference documents) must be positive, got {ref_len}")
        return cls(_Frequencies(document_frequency), float(ref_len))


def load_cider_document_frequency(path: str) -> CiderDocumentFrequency:
    """Load a CIDEr-D document-frequency pickle (``*-words.p``) as the reference does (``encoding="latin1"``, so
    Python 2 pickles load too). The file is unpickled: load only files you trust."""
    with open(path, "rb") as f:
        data = pickle.load(f, encoding="latin1")
    missing = {"document_frequency", "ref_len"} - set(data)
    if missing:
        raise ValueError(f"{path}: not a CIDEr document-frequency pickle (missing {sorted(missing)})")
    return CiderDocumentFrequency.from_counts(data["document_frequency"], data["ref_len"])


class _CiderDScorer(CiderScorer):
    """pycocoevalcap's CIDEr-D scorer with optional cached document frequencies.

    The parent computes n-gram counts (``precook``), tf-idf vectors, the clipped cosine and the length penalty. Its
    ``compute_score`` recomputes the document frequencies from the scored references and ``compute_cider`` sets
    ``ref_len = log(number of scored images)``; with a cache we skip the former and pin ``ref_len`` to
    ``log(cache.ref_len)`` (assignments from the parent are ignored). Without a cache it behaves exactly like the
    parent (the reference's ``df_mode="corpus"``).
    """

    def __init__(self, sigma: float, cache: Optional[CiderDocumentFrequency] = None):
        self._pinned_ref_len = None if cache is None else math.log(cache.ref_len)
        super().__init__(n=4, sigma=sigma)  # pycocoevalcap cooks 1..4-grams whatever n is: keep n = 4
        if cache is not None:
            self.document_frequency = cache.document_frequency

    @property
    def ref_len(self):
        return self._ref_len

    @ref_len.setter
    def ref_len(self, value):
        self._ref_len = value if self._pinned_ref_len is None else self._pinned_ref_len

    def compute_score(self, option=None, verbose=0):
        if self._pinned_ref_len is None:
            return super().compute_score(option, verbose)
        scores = np.array(self.compute_cider(), dtype=np.float64)
        return float(scores.mean()), scores


def cider_d(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    document_frequency: Optional[CiderDocumentFrequency] = None,
    sigma: float = 6.0,
) -> Tuple[float, np.ndarray]:
    """CIDEr-D of ``hypotheses[i]`` against the references ``references[i]`` (whitespace-tokenised strings).

    ``document_frequency``: cached statistics from :func:`load_cider_document_frequency` (or
    :meth:`CiderDocumentFrequency.from_counts`); ``None`` computes them from ``references`` (each entry one document;
    a single-image corpus therefore scores 0). Returns ``(mean, per_sample)``, ``per_sample`` a float64 array.

    As in pycocoevalcap and the reference, the length penalty ``exp(-(l_hyp - l_ref)^2 / (2 sigma^2))`` counts
    *bigrams* (``len - 1`` for non-empty text), not words.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        return 0.0, np.zeros(0, dtype=np.float64)
    scorer = _CiderDScorer(sigma, document_frequency)
    for i, (hyp, refs) in enumerate(zip(hypotheses, references, strict=True)):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{i}] must be a non-empty list of strings, got {refs!r}")
        scorer += (hyp, list(refs))
    mean, per_sample = scorer.compute_score()
    return float(mean), np.asarray(per_sample, dtype=np.float64)


# --- ROUGE --------------------------------------------------------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_scores(hypotheses: Sequence[str], references: Sequence[str]) -> Dict[str, object]:
    """ROUGE-1/2/L of each hypothesis against its reference, in percent.

    Returns ``{"rouge1_recall": [per sample], "rouge1_f1": [...], ..., "rougeL_f1": [...]}`` plus the means under
    ``"<key>_mean"`` (0.0 for no samples). `rouge_score` lowercases, keeps only ``[a-z0-9]`` runs as tokens and
    Porter-stems tokens longer than 3 characters; ``rougeL`` is the sentence-level LCS (not ``rougeLsum``).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    scorer = _rouge_scorer()
    result: Dict[str, object] = {f"{t}_{kind}": [] for t in ROUGE_TYPES for kind in ("recall", "f1")}
    for hyp, ref in zip(hypotheses, references, strict=True):
        scores = scorer.score(ref, hyp)  # rouge_score takes (target, prediction)
        for t in ROUGE_TYPES:
            result[f"{t}_recall"].append(scores[t].recall * 100.0)
            result[f"{t}_f1"].append(scores[t].fmeasure * 100.0)
    for key in list(result):
        values = result[key]
        result[f"{key}_mean"] = float(sum(values) / len(values)) if values else 0.0
    return result


# --- normalisation ------------------------------------------------------------------------------------------------



# The reference's BioASQ-style cleaner uses the regex class `[.,?;*!%^&_+():-\[\]{}]`, in which `:-\[` is a *range*
# (':' .. '['): it deletes `: ; < = > ? @ [` and A-Z (none left after lowercasing) but keeps '-'. Spelled out here.
_BIOCLEAN_DROP = re.compile(r"[.,?;*!%^&_+():;<=>?@A-Z\[\]{}]")


def bioclean(text: str) -> str:
    """Caption normalisation of the offline caption metrics (BiomedGPT's ``metric_caption.py``), applied to both
    hypotheses and gold captions: drop ``" / \\ '``, trim, lowercase, then drop ``. , ? ; * ! % ^ & _ + ( ) : ; < = >
    ? @ [ ] { }``. Hyphens and inner whitespace are kept as they are (no re-joining), as in the reference."""
    text = text.replace('"', "").replace("/", "").replace("\\", "").replace("'", "").strip().lower()
    return _BIOCLEAN_DROP.sub("", text)


_PTB_SYMBOLS = {
    "(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-",
    "[UNK]": "UNK", "&": "&amp;", "<": "&lt;", ">": "&gt;",
}


def _is_number_with_commas(token: str) -> bool:
    return all(ch.isdigit() or ch == "," for ch in token)


def _is_capital_letter(token: str) -> bool:
    return len(token) == 1 and token.isupper()


def fix_tokenization(text: str) -> str:
    """Re-tokenise whitespace-separated text the way Gigaword references are tokenised (PTB conventions).

    Token rules, left to right:

    * ``( ) [ ] { }`` -> ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-``; ``& < >`` -> ``&amp; &lt; &gt;``;
      ``[UNK]`` -> ``UNK``;
    * ``"`` alternates between opening ````` `` and closing ``''``; a lone ``'`` alternates between ````` and ``'``;
    * ``don ' t`` -> ``do n't``; ``' s`` / ``' d`` / ``' ll`` -> ``'s`` / ``'d`` / ``'ll``; ``. . .`` -> ``...``;
    * numbers: ``3 , 000`` -> ``3,000``, ``3 . 03`` -> ``3.03``; acronyms ``U . N .`` -> ``U.N.`` (capitals only);
    * dashes: ``- -`` -> ``--``; ``well - known`` -> ``well-known`` (a dash between two non-punctuation tokens is glued
      to both); a dash at either end, or next to punctuation, stays a token.

    (The reference joins acronyms but leaves a duplicate final ``.`` token; that path needs capitals, and
    :func:`gigaword_hypothesis` lowercases first, so it never affects reported scores.)
    """
    tokens = text.split()
    out: List[str] = []
    in_double_quote = in_single_quote = False
    glue_next = False  # the previous token was a dash glued to the word before it
    i, n = 0, len(tokens)

    def ahead(k: int) -> Optional[str]:
        return tokens[i + k] if i + k < n else None

    while i < n:
        tok, nxt = tokens[i], ahead(1)
        glued_dash = False
        step = 1
        if tok in _PTB_SYMBOLS:
            out.append(_PTB_SYMBOLS[tok])
        elif tok == '"':
            out.append("''" if in_double_quote else "``")
            in_double_quote = not in_double_quote
        elif tok == "'" and out and out[-1].endswith("n") and nxt == "t":
            out[-1] = out[-1][:-1]
            out.append("n't")
            step = 2
        elif tok == "'" and nxt in ("s", "d", "ll"):
            out.append("'" + nxt)
            step = 2
        elif tok == "'":
            out.append("'" if in_single_quote else "`")
            in_single_quote = not in_single_quote
        elif tok == "." and nxt == "." and ahead(2) == ".":
            out.append("...")
            step = 3
        elif tok == "," and out and _is_number_with_commas(out[-1]) and nxt is not None and _is_number_with_commas(nxt):
            out[-1] += "," + nxt
            step = 2
        elif tok == "." and out and out[-1].isdigit() and nxt is not None and nxt.isdigit():
            out[-1] += "." + nxt
            step = 2
        elif tok == "." and out and _is_capital_letter(out[-1]) and nxt is not None and _is_capital_letter(nxt) \
                and ahead(2) == ".":
            # U . N . [S . ] -> U.N.[S.]: absorb every following "<capital> ." pair
            end = i + 3
            while end + 1 < n and _is_capital_letter(tokens[end]) and tokens[end + 1] == ".":
                end += 2
            out[-1] += "".join(tokens[i:end])
            step = end - i
        elif tok == "-":
            if nxt == "-":
                out.append("--")
                step = 2
            elif i == 0 or nxt is None:
                out.append("-")
            elif out[-1] not in string.punctuation and nxt[0] not in string.punctuation:
                out[-1] += "-"
                glued_dash = True
            else:
                out.append("-")
        elif glue_next and out and tok[0] not in string.punctuation:
            out[-1] += tok
        else:
            out.append(tok)
        glue_next = glued_dash
        i += step
    return " ".join(out)


def gigaword_hypothesis(text: str) -> str:
    """Normalise a generated summary before ROUGE as the reference's ``gigaword`` validation does: lowercase, trim,
    :func:`fix_tokenization`, ``<unk>`` -> `` unk``, then replace **every** ``1`` by ``#``.

    The last step is the Gigaword convention (its references have digits masked as ``#``); the reference applies it
    to MeQSum as well, whose references keep their digits, and only to hypotheses. It is kept so that validation
    ROUGE matches the published numbers. (`rouge_score` drops ``#`` when tokenising, so ``1``s never match.)
    """
    return fix_tokenization(text.lower().strip()).replace("<unk>", " unk").replace("1", "#")
