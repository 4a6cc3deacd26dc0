"""fairseq criteria of the plugin (importing registers them)."""
from .adjust_label_smoothed_cross_entropy import (  # noqa: F401
    AdjustLabelSmoothedCrossEntropyCriterion,
    AdjustLabelSmoothedCrossEntropyCriterionConfig,
)
