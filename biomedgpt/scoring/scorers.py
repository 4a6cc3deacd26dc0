"""Scorers for `fairseq-generate --scoring NAME` (registered with `fairseq.scoring.register_scorer`).

`fairseq_cli.generate` scores the top hypothesis of every sample with ``scorer.add_string(target_str,
detok_hypo_str)``: ``target_str`` is the target tokens without padding, turned into text by the target dictionary
(``--post-process``) and then by ``--bpe`` / ``--tokenizer`` decoding, and ``detok_hypo_str`` is the best hypothesis
decoded the same way. Decoded GPT-2 BPE text usually starts with a space (the plugin encodes ``" " + text``), so every
scorer here strips leading and trailing whitespace from both strings. At the end generate prints
``Generate <subset> with beam=<beam>: <result_string()>``.

* ``vqa_accuracy`` — VQA soft accuracy: the reference may hold several answers separated by ``&&``, each either
  plain (confidence 1.0) or in the reference's ``confidence|!+answer`` form (``1.0|!+yes&&0.5|!+no``); a hypothesis
  scores the confidence of the answer it equals exactly (after stripping), 0 otherwise.
* ``accuracy`` — exact match of the stripped strings.
* ``rouge`` — ROUGE-1/2/L F1 (percent) with :func:`biomedgpt.metrics.text_metrics.rouge_scores`; `score()` is ROUGE-L.
* ``cider`` — CIDEr-D with :func:`biomedgpt.metrics.text_metrics.cider_d`; references are split on ``&&``
  (several per sample); hypotheses and references are lowercased (unless ``--cider-keep-case``) and stripped of
  punctuation. Without ``--cider-cached-tokens`` the document frequencies come from the scored references (so a
  single-sample run scores 0), as in the caption task's validation.
* ``box_accuracy`` — Acc@0.5 for visual grounding: the first four ``<bin_k>`` tokens of hypothesis and reference
  as boxes, IoU >= 0.5 counts.

The option names of the dataclasses below become global ``fairseq-generate`` flags, so they carry the scorer's name.
"""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from fairseq.dataclass import FairseqDataclass
from fairseq.scoring import BaseScorer, register_scorer

from ..data.text import strip_punctuation
from ..metrics.boxes import box_iou
from ..metrics.text_metrics import cider_d, load_cider_document_frequency, rouge_scores

__all__ = [
    "parse_vqa_reference",
    "parse_bin_box",
    "VqaAccuracyScorer", "AccuracyScorer", "RougeScorer", "CiderScorer", "BoxAccuracyScorer",
    "VqaAccuracyScorerConfig", "AccuracyScorerConfig", "RougeScorerConfig", "CiderScorerConfig",
    "BoxAccuracyScorerConfig",
]

ANSWER_SEPARATOR = "&&"
CONFIDENCE_SEPARATOR = "|!+"


def _percent_mean(values: List[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0


# --- vqa_accuracy -------------------------------------------------------------------------------------------------


def parse_vqa_reference(text: str) -> Dict[str, float]:
    """``"1.0|!+yes&&0.5|!+no"`` -> ``{"yes": 1.0, "no": 0.5}``; a plain answer (``"yes&&no"``) has confidence 1.0.

    Answers and confidences are stripped; empty items are skipped; an answer given twice keeps its highest
    confidence. A confidence that is not a number raises ``ValueError``.
    """
    answers: Dict[str, float] = {}
    for item in text.split(ANSWER_SEPARATOR):
        if not item.strip():
            continue
        if CONFIDENCE_SEPARATOR in item:
            conf_text, _, answer = item.partition(CONFIDENCE_SEPARATOR)
            try:
                confidence = float(conf_text.strip())
            except ValueError:
                raise ValueError(
                    f"VQA reference answer {item!r}: expected 'confidence{CONFIDENCE_SEPARATOR}answer' with a numeric "
                    f"confidence") from None
        else:
            answer, confidence = item, 1.0
        answer = answer.strip()
        answers[answer] = max(confidence, answers.get(answer, confidence))
    return answers


@dataclass
class VqaAccuracyScorerConfig(FairseqDataclass):
    pass


class _MeanScorer(BaseScorer):
    """Mean (percent) of a per-sentence score; subclasses define `sentence_score` and the result label."""

    label, unit = "", "sentences"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.scores: List[float] = []

    def add_string(self, ref, pred):
        super().add_string(ref, pred)
        self.scores.append(self.sentence_score(ref, pred))

    def score(self) -> float:
        return _percent_mean(self.scores)

    def result_string(self) -> str:
        return f"{self.label} = {self.score():.2f} ({len(self.scores)} {self.unit})"


@register_scorer("vqa_accuracy", dataclass=VqaAccuracyScorerConfig)
class VqaAccuracyScorer(_MeanScorer):
    """Mean over questions of the confidence of the generated answer (percent)."""

    label, unit = "VQA accuracy", "questions"

    def sentence_score(self, ref, pred) -> float:
        return parse_vqa_reference(ref).get(pred.strip(), 0.0)


# --- accuracy -----------------------------------------------------------------------------------------------------


@dataclass
class AccuracyScorerConfig(FairseqDataclass):
    pass


@register_scorer("accuracy", dataclass=AccuracyScorerConfig)
class AccuracyScorer(_MeanScorer):
    """Exact-match accuracy (percent) of the stripped hypothesis against the stripped reference."""

    label = "Accuracy"

    def sentence_score(self, ref, pred) -> float:
        return 1.0 if pred.strip() == ref.strip() else 0.0


# --- rouge --------------------------------------------------------------------------------------------------------


@dataclass
class RougeScorerConfig(FairseqDataclass):
    pass


@register_scorer("rouge", dataclass=RougeScorerConfig)
class RougeScorer(BaseScorer):
    """Sentence-level ROUGE-1/2/L F1 (percent, Porter stemmer) averaged over sentences; `score()` is ROUGE-L F1."""

    def _means(self) -> Dict[str, float]:
        scores = rouge_scores([p.strip() for p in self.pred], [r.strip() for r in self.ref])
        return {key: scores[f"{key}_f1_mean"] for key in ("rouge1", "rouge2", "rougeL")}

    def score(self) -> float:
        return self._means()["rougeL"]

    def result_string(self) -> str:
        means = self._means()
        return (f"ROUGE-1 = {means['rouge1']:.2f}, ROUGE-2 = {means['rouge2']:.2f}, "
                f"ROUGE-L = {means['rougeL']:.2f} ({len(self.pred)} sentences)")


# --- cider --------------------------------------------------------------------------------------------------------


@dataclass
class CiderScorerConfig(FairseqDataclass):
    cider_cached_tokens: Optional[str] = field(default=None, metadata={
        "help": "(--scoring cider) CIDEr-D document frequencies, a pickle {'document_frequency': {ngram: count}, "
                "'ref_len': number of images} (loaded with pickle: trusted files only); default: computed from the "
                "scored references"})
    # A bool field defaulting to True would become a `store_false` flag in fairseq (`--cider-lowercase` would turn
    # lowercasing *off*), so the option is phrased the other way round.
    cider_keep_case: bool = field(default=False, metadata={
        "help": "(--scoring cider) compare hypotheses and references without lowercasing them (punctuation is "
                "always removed)"})


@register_scorer("cider", dataclass=CiderScorerConfig)
class CiderScorer(BaseScorer):
    """CIDEr-D (as pycocoevalcap, not multiplied by 100) of each hypothesis against its ``&&``-separated references."""

    def __init__(self, cfg):
        super().__init__(cfg)
        path = getattr(cfg, "cider_cached_tokens", None)
        self.document_frequency = load_cider_document_frequency(path) if path else None
        self.lowercase = not getattr(cfg, "cider_keep_case", False)

    def normalise(self, text: str) -> str:
        if self.lowercase:
            text = text.lower()
        return " ".join(strip_punctuation(text).split())

    def references(self, ref: str) -> List[str]:
        """One reference string -> its normalised references (split on ``&&`` before punctuation is removed)."""
        refs = [self.normalise(r) for r in ref.split(ANSWER_SEPARATOR)]
        return [r for r in refs if r] or [""]

    def score(self) -> float:
        mean, _ = cider_d([self.normalise(p) for p in self.pred], [self.references(r) for r in self.ref],
                          self.document_frequency)
        return mean

    def result_string(self) -> str:
        return f"CIDEr = {self.score():.3f} ({len(self.pred)} sentences)"


# --- box_accuracy -------------------------------------------------------------------------------------------------

BIN_TOKEN = re.compile(r"<bin_(\d+)>")


def parse_bin_box(text: str) -> Optional[List[int]]:
    """The first four ``<bin_k>`` tokens of a string as ``[x0, y0, x1, y1]`` bin indices (None if fewer than 4)."""
    bins = [int(k) for k in BIN_TOKEN.findall(text)[:4]]
    return bins if len(bins) == 4 else None


@dataclass
class BoxAccuracyScorerConfig(FairseqDataclass):
    pass


@register_scorer("box_accuracy", dataclass=BoxAccuracyScorerConfig)
class BoxAccuracyScorer(_MeanScorer):
    """Acc@0.5 of visual grounding (`refcoco`): a hypothesis counts when its 4 location tokens overlap the
    reference's with IoU >= 0.5. Both boxes are compared in bin units; the reference's dequantisation is a
    per-axis scaling, which leaves the IoU unchanged, so only the target's own rounding to bins differs from
    the reference's Acc@0.5 on original pixel coordinates (the task's validation `score` uses those)."""

    label, unit = "Acc@0.5", "regions"

    def sentence_score(self, ref, pred) -> float:
        target, hypothesis = parse_bin_box(ref), parse_bin_box(pred)
        if target is None:
            raise ValueError(f"box_accuracy: the reference {ref!r} does not hold 4 <bin_k> location tokens")
        if hypothesis is None:
            return 0.0
        return float(box_iou(torch.tensor([target], dtype=torch.float), torch.tensor([hypothesis], dtype=torch.float))
                     [0] >= 0.5)
