"""Small builders shared by the encoder and decoder: embedding tables, rel-pos tables, drop-path schedules."""
from typing import List, Optional, Tuple

import torch
from torch import nn

from fairseq.modules.quant_noise import quant_noise


def embedding_table(num_embeddings: int, dim: int, padding_idx: Optional[int], zero_init: bool = False) -> nn.Embedding:
    """`nn.Embedding` initialised N(0, dim^-0.5) (or zeros), padding row zeroed."""
    table = nn.Embedding(num_embeddings, dim, padding_idx=padding_idx)
    if zero_init:
        nn.init.zeros_(table.weight)
    else:
        nn.init.normal_(table.weight, mean=0, std=dim ** -0.5)
        if padding_idx is not None:
            nn.init.zeros_(table.weight[padding_idx])
    return table


def rel_pos_tables(layers: int, token_bucket_size: int, num_image_rel: int, heads: int) -> Tuple[nn.ModuleList, nn.ModuleList]:
    """One 1-D token table (`2*bucket-1` rows) and one 2-D image table per layer, each with `heads` columns."""
    token = nn.ModuleList([embedding_table(2 * token_bucket_size - 1, heads, None, zero_init=True) for _ in range(layers)])
    image = nn.ModuleList([embedding_table(num_image_rel, heads, None, zero_init=True) for _ in range(layers)])
    return token, image


def stack_drop_path_rates(rate: float, layers: int) -> List[float]:
    """Drop-path rate per layer or block: `linspace(0, rate, layers)` (the first never drops)."""
    return torch.linspace(0, rate, layers, device="cpu").tolist()


def input_quant_noise(dim: int, args) -> Optional[nn.Module]:
    """The bias-free `dim x dim` quant-noise projection fairseq applies to embeddings when `--quant-noise-pq > 0`."""
    if args.quant_noise_pq <= 0:
        return None
    return quant_noise(nn.Linear(dim, dim, bias=False), args.quant_noise_pq, args.quant_noise_pq_block_size)
