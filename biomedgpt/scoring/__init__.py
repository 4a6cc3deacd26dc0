"""fairseq scorers for `fairseq-generate --scoring NAME`: `vqa_accuracy`, `accuracy`, `rouge`, `cider`
and `box_accuracy`.

Importing this package registers them with `fairseq.scoring.register_scorer` (see :mod:`.scorers`).
"""
from .scorers import (  # noqa: F401  (registration side effects)
    AccuracyScorer,
    BoxAccuracyScorer,
    CiderScorer,
    RougeScorer,
    VqaAccuracyScorer,
    parse_vqa_reference,
)
