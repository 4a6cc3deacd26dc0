"""Evaluation metrics used by the tasks (library-backed: pycocoevalcap for CIDEr-D, rouge-score for ROUGE)."""
from .text_metrics import (  # noqa: F401
    ROUGE_TYPES,
    CiderDocumentFrequency,
    bioclean,
    cider_d,
    fix_tokenization,
    gigaword_hypothesis,
    load_cider_document_frequency,
    rouge_scores,
    strip_punctuation,
)
