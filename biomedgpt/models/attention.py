"""Multi-head attention with an additive position bias, prefix key/values and incremental state.

Parameter names match the released checkpoints (`q_proj`, `k_proj`, `v_proj`, `out_proj`, optional
`c_attn` head scales). Logits are scaled by `(head_dim * scale_factor) ** -0.5`. Two numerically
equivalent kernels: `scaled_dot_product_attention` (default) and an explicit matmul/softmax ("eager")
kept for parity checks; choose with `set_attention_impl` or the `BIOMEDGPT_ATTENTION` environment
variable. This module never builds position biases itself: callers pass them in.
"""
import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairseq.incremental_decoding_utils import with_incremental_state
from fairseq.modules.quant_noise import quant_noise

_IMPLEMENTATIONS = ("sdpa", "eager")
_impl = os.environ.get("BIOMEDGPT_ATTENTION", "sdpa")
if _impl not in _IMPLEMENTATIONS:
    raise ValueError(f"BIOMEDGPT_ATTENTION must be one of {_IMPLEMENTATIONS}, got {_impl!r}")


def set_attention_impl(name: str) -> None:
    """Select the attention kernel for every OFA attention module: 'sdpa' or 'eager'."""
    global _impl
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {_IMPLEMENTATIONS}, got {name!r}")
    _impl = name


def get_attention_impl() -> str:
    return _impl


def merge_masks(
    attn_bias: Optional[Tensor],
    attn_mask: Optional[Tensor],
    key_padding_mask: Optional[Tensor],
    prompt_len: int,
    dtype: torch.dtype,
) -> Optional[Tensor]:
    """One additive mask `[B|1, H|1, T, S]` from a position bias, a float/bool mask and a key padding mask.

    The bias covers the last `S - prompt_len` keys (prefix-prompt keys get no bias), as in the reference. It is
    capped at the largest finite value of `dtype`: a bias that overflowed in fp16 (+inf) would make its whole
    softmax row NaN, and in fp32 that entry would dominate the row anyway.
    """
    mask = attn_bias
    if mask is not None and mask.is_floating_point():
        mask = mask.clamp(max=torch.finfo(dtype).max)
    if mask is not None and prompt_len > 0:
        mask = F.pad(mask, (prompt_len, 0))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(
                attn_mask, float("-inf")
            )
        mask = attn_mask if mask is None else mask + attn_mask
    if key_padding_mask is not None:
        pad = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
        pad = pad.masked_fill(key_padding_mask.bool(), float("-inf"))[:, None, None, :]
        mask = pad if mask is None else mask + pad
    return mask


@with_incremental_state
class OFAAttention(nn.Module):
    """Attention of OFA layers.

    Args:
        embed_dim: model width D.
        num_heads: number of heads H (D must be divisible by H).
        dropout: dropout on attention probabilities.
        scale_factor: logits are multiplied by `(head_dim * scale_factor) ** -0.5` (OFA uses 2).
        scale_heads: learn a per-head output scale `c_attn` (NormFormer `--scale-heads`).
        self_attention: query, key and value are the same tensor.
        encoder_decoder_attention: keys/values come from the encoder and are cached once when decoding.
        q_noise, qn_block_size: quantisation noise on the projections (fairseq `--quant-noise-pq*`).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        scale_factor: float = 2.0,
        scale_heads: bool = False,
        self_attention: bool = False,
        encoder_decoder_attention: bool = False,
        q_noise: float = 0.0,
        qn_block_size: int = 8,
    ):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.scaling = (self.head_dim * scale_factor) ** -0.5
        self.self_attention = self_attention
        self.encoder_decoder_attention = encoder_decoder_attention
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if scale_heads else None
        # registration order k, v, q, out reproduces the released state-dict order
        self.k_proj = quant_noise(nn.Linear(embed_dim, embed_dim), q_noise, qn_block_size)
        self.v_proj = quant_noise(nn.Linear(embed_dim, embed_dim), q_noise, qn_block_size)
        self.q_proj = quant_noise(nn.Linear(embed_dim, embed_dim), q_noise, qn_block_size)
        self.out_proj = quant_noise(nn.Linear(embed_dim, embed_dim), q_noise, qn_block_size)
        self.reset_parameters()

    def reset_parameters(self):
        gain = 2 ** -0.5
        for proj in (self.k_proj, self.v_proj, self.q_proj):
            nn.init.xavier_uniform_(proj.weight, gain=gain)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def _heads(self, x: Tensor) -> Tensor:
        """`[L, B, D]` -> `[B, H, L, hd]`."""
        length, bsz, _ = x.shape
        return x.view(length, bsz, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor],
        value: Optional[Tensor],
        key_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        need_weights: bool = False,
        static_kv: bool = False,
        attn_mask: Optional[Tensor] = None,
        attn_bias: Optional[Tensor] = None,
        prompt_kv: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Attend `query [T,B,D]` to `key/value [S,B,D]`.

        `attn_bias` is `[B|1, H, T, S]` (S = keys without prompt), `attn_mask` `[T, S+prompt]` additive,
        `key_padding_mask` `[B, S+prompt]` (True = padding), `prompt_kv` `[2, B, H, P, hd]`.
        Returns `(out [T,B,D], head-averaged weights [B,T,S] or None)`.
        """
        tgt_len, bsz, _ = query.shape
        q = self._heads(self.q_proj(query) * self.scaling)
        saved = self._get_input_buffer(incremental_state) if incremental_state is not None else {}
        if static_kv and "prev_key" in saved:
            k, v = saved["prev_key"], saved["prev_value"]
            key_padding_mask = saved.get("prev_key_padding_mask", key_padding_mask)
        else:
            k = self._heads(self.k_proj(key))
            v = self._heads(self.v_proj(value))
            if "prev_key" in saved:
                k = torch.cat([saved["prev_key"], k], dim=2)
                v = torch.cat([saved["prev_value"], v], dim=2)
                key_padding_mask = _concat_padding(saved.get("prev_key_padding_mask"), key_padding_mask, bsz,
                                                   saved["prev_key"].size(2), tgt_len, query.device)
            if incremental_state is not None:
                k, v = k.contiguous(), v.contiguous()  # read at every later step: keep them dense
                saved = {"prev_key": k, "prev_value": v}
                if key_padding_mask is not None:
                    saved["prev_key_padding_mask"] = key_padding_mask
                self._set_input_buffer(incremental_state, saved)

        prompt_len = 0
        if prompt_kv is not None:
            prompt_k, prompt_v = prompt_kv[0], prompt_kv[1]
            prompt_len = prompt_k.size(2)
            k = torch.cat([prompt_k.to(k.dtype), k], dim=2)
            v = torch.cat([prompt_v.to(v.dtype), v], dim=2)
            if key_padding_mask is not None:  # prefix keys are never padding
                key_padding_mask = F.pad(key_padding_mask.bool(), (prompt_len, 0), value=False)

        mask = merge_masks(attn_bias, attn_mask, key_padding_mask, prompt_len, q.dtype)
        if mask is not None:
            mask = mask.to(q.dtype)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if _impl == "sdpa" and not need_weights:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=1.0)
        else:
            # logits, bias and softmax in fp32: q.k + bias overflows fp16 long before the softmax would
            logits = torch.matmul(q.float(), k.float().transpose(-1, -2))  # (B, H, T, S)
            if mask is not None:
                logits = logits + mask.float()
            probs = torch.softmax(logits, dim=-1).type_as(q)
            if need_weights:
                weights = probs[..., prompt_len:].mean(dim=1)
            out = torch.matmul(F.dropout(probs, p=dropout_p, training=self.training), v)  # (B, H, T, hd)
        if self.c_attn is not None:
            out = out * self.c_attn.view(1, -1, 1, 1).to(out.dtype)
        out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, self.embed_dim)
        return self.out_proj(out), weights

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        """Follow beam reordering: index-select the cached keys/values along the batch dimension."""
        saved = self._get_input_buffer(incremental_state)
        if saved:
            for name, cached in list(saved.items()):
                if cached is not None:
                    saved[name] = cached.index_select(0, new_order)
            self._set_input_buffer(incremental_state, saved)
        return incremental_state

    def upgrade_state_dict_named(self, state_dict, name: str):
        """Split a legacy fused `in_proj_weight/bias` into `q_proj`, `k_proj`, `v_proj`."""
        prefix = f"{name}." if name else ""
        for kind in ("weight", "bias"):
            fused = state_dict.pop(f"{prefix}in_proj_{kind}", None)
            if fused is not None:
                for proj, part in zip(("q_proj", "k_proj", "v_proj"), fused.chunk(3, dim=0)):
                    state_dict[f"{prefix}{proj}.{kind}"] = part

    def _get_input_buffer(self, incremental_state) -> Dict[str, Optional[Tensor]]:
        result = self.get_incremental_state(incremental_state, "attn_state")
        return result if result is not None else {}

    def _set_input_buffer(self, incremental_state, buffer: Dict[str, Optional[Tensor]]):
        return self.set_incremental_state(incremental_state, "attn_state", buffer)


def _concat_padding(prev: Optional[Tensor], new: Optional[Tensor], bsz: int, prev_len: int, new_len: int,
                    device) -> Optional[Tensor]:
    """Key padding mask of cached keys followed by new keys; a missing part means "no padding"."""
    if prev is None and new is None:
        return None
    if prev is None:
        prev = torch.zeros(bsz, prev_len, dtype=torch.bool, device=device)
    if new is None:
        new = torch.zeros(bsz, new_len, dtype=torch.bool, device=device)
    return torch.cat([prev.bool(), new.bool()], dim=1)
