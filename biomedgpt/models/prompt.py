"""Prefix tuning: learned per-layer key/value prefixes (`--encoder-prompt` / `--decoder-prompt`).

Keys `embedding.weight` and, with projection, `trans.0.*`/`trans.2.*` match the reference checkpoints.
"""
from typing import List

import torch
from torch import Tensor, nn


class PromptEncoder(nn.Module):
    """Produces `layers` pairs of prefix keys/values, each `[2, B, H, length, head_dim]`.

    Args:
        length: number of prefix positions.
        projection: reparametrise through an MLP `embed_dim -> proj_dim -> layers*2*embed_dim`.
        embed_dim, proj_dim, layers, heads: sizes of the stack the prefixes are for.
        dropout: dropout on the produced prefixes (the reference hard-codes 0.2).
    """

    def __init__(self, length: int, projection: bool, embed_dim: int, proj_dim: int, layers: int, heads: int,
                 dropout: float = 0.2):
        super().__init__()
        self.length, self.layers, self.heads = length, layers, heads
        self.head_dim = embed_dim // heads
        out_dim = layers * 2 * embed_dim
        if projection:
            self.embedding = nn.Embedding(length, embed_dim)
            self.trans = nn.Sequential(nn.Linear(embed_dim, proj_dim), nn.ReLU(), nn.Linear(proj_dim, out_dim))
        else:
            self.embedding = nn.Embedding(length, out_dim)
            self.trans = None
        self.dropout = nn.Dropout(dropout)

    def forward(self, bsz: int, device: torch.device) -> List[Tensor]:
        tokens = torch.arange(self.length, device=device).unsqueeze(0).expand(bsz, -1)
        past = self.embedding(tokens)
        if self.trans is not None:
            past = self.trans(past)
        past = past.view(bsz, self.length, self.layers * 2, self.heads, self.head_dim)
        past = self.dropout(past).permute(2, 0, 3, 1, 4)  # (layers*2, B, H, length, hd)
        return list(past.split(2))
