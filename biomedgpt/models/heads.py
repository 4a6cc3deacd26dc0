"""Sentence-level classification head of the `ofa` model (`classification_heads.NAME.{dense,out_proj}`)."""
import torch
from torch import Tensor, nn

from fairseq import utils


class OFAClassificationHead(nn.Module):
    """`mlp`: dropout -> dense -> activation -> dropout -> out_proj; `linear`: dropout -> out_proj."""

    def __init__(self, input_dim: int, inner_dim: int, num_classes: int, activation_fn: str, pooler_dropout: float,
                 pooler_classifier: str = "mlp", use_two_images: bool = False, do_spectral_norm: bool = False):
        super().__init__()
        if pooler_classifier not in ("mlp", "linear"):
            raise ValueError(f"--pooler-classifier must be 'mlp' or 'linear', got {pooler_classifier!r}")
        self.pooler_classifier = pooler_classifier
        self.use_two_images = use_two_images
        input_dim = input_dim * 2 if use_two_images else input_dim
        self.dropout = nn.Dropout(p=pooler_dropout)
        if pooler_classifier == "mlp":
            self.dense = nn.Linear(input_dim, inner_dim)
            self.activation_fn = utils.get_activation_fn(activation_fn)
            self.out_proj = nn.Linear(inner_dim, num_classes)
        else:
            self.dense = None
            self.out_proj = nn.Linear(input_dim, num_classes)
        if do_spectral_norm:
            self.out_proj = torch.nn.utils.spectral_norm(self.out_proj)

    @property
    def shape(self):
        """`(num_classes, inner_dim)`; inner_dim is None for the linear classifier."""
        return self.out_proj.out_features, (self.dense.out_features if self.dense is not None else None)

    def forward(self, features: Tensor) -> Tensor:
        x = self.dropout(features)
        if self.dense is not None:
            x = self.dropout(self.activation_fn(self.dense(x)))
        return self.out_proj(x)
