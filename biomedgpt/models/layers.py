"""OFA transformer layers: pre/post-LN encoder and decoder blocks with NormFormer options.

Options mirror the reference flags: `--scale-attn` (LayerNorm on attention outputs), `--scale-fc` (LayerNorm
inside the FFN), `--scale-resids` (learned residual scale), drop path on residual branches, and adapters.
Module names (`self_attn`, `attn_ln`, `ffn_layernorm`, `w_resid`, ...) are the released checkpoint keys.
"""
from typing import Optional

import torch
from torch import Tensor, nn

from fairseq import utils
from fairseq.modules import LayerNorm
from fairseq.modules.fairseq_dropout import FairseqDropout
from fairseq.modules.quant_noise import quant_noise

from .attention import OFAAttention


class DropPath(nn.Module):
    """Stochastic depth for `[T, B, C]` tensors: drops whole samples (dim 1) of a residual branch."""

    def __init__(self, drop_prob: float = 0.0, batch_dim: int = 1):
        super().__init__()
        self.drop_prob = drop_prob
        self.batch_dim = batch_dim

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = [1] * x.dim()
        shape[self.batch_dim] = x.size(self.batch_dim)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class Adapter(nn.Module):
    """Bottleneck adapter: `x + up(relu(down(x)))` (BERT-style init, zero biases)."""

    def __init__(self, d_model: int, down_size: int):
        super().__init__()
        self.down_proj = nn.Linear(d_model, down_size)
        self.up_proj = nn.Linear(down_size, d_model)
        for proj in (self.down_proj, self.up_proj):
            nn.init.normal_(proj.weight, std=0.02)
            nn.init.zeros_(proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up_proj(torch.relu(self.down_proj(x)))


def _linear(in_dim: int, out_dim: int, args) -> nn.Module:
    return quant_noise(nn.Linear(in_dim, out_dim), args.quant_noise_pq, args.quant_noise_pq_block_size)


class _Block(nn.Module):
    """What encoder and decoder layers share: options, feed-forward sub-block and residual handling."""

    legacy_layer_norms = {}  # index in the pre-2019 `layer_norms` list -> current module name

    def upgrade_state_dict_named(self, state_dict, name: str):
        """Rename legacy `layer_norms.N.*` keys to the named layer norms."""
        for old, new in self.legacy_layer_norms.items():
            for suffix in ("weight", "bias"):
                key = f"{name}.layer_norms.{old}.{suffix}"
                if key in state_dict:
                    state_dict[f"{name}.{new}.{suffix}"] = state_dict.pop(key)

    def _init_common(self, args, embed_dim: int, ffn_dim: int, normalize_before: bool, drop_path_rate: float):
        self.embed_dim = embed_dim
        self.normalize_before = normalize_before
        self.w_resid = nn.Parameter(torch.ones(embed_dim)) if getattr(args, "scale_resids", False) else None
        self.dropout_module = FairseqDropout(args.dropout, module_name=self.__class__.__name__)
        act_dropout = getattr(args, "activation_dropout", 0.0) or getattr(args, "relu_dropout", 0.0) or 0.0
        self.activation_dropout_module = FairseqDropout(float(act_dropout), module_name=self.__class__.__name__)
        self.activation_fn = utils.get_activation_fn(activation=getattr(args, "activation_fn", "relu") or "relu")
        self.ffn_dim = ffn_dim
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.adapter = Adapter(embed_dim, args.adapter_dim) if getattr(args, "adapter", False) else None

    def _attention(self, args, embed_dim: int, heads: int, **kwargs) -> OFAAttention:
        return OFAAttention(
            embed_dim, heads, dropout=args.attention_dropout, scale_factor=args.attn_scale_factor,
            scale_heads=getattr(args, "scale_heads", False), q_noise=args.quant_noise_pq,
            qn_block_size=args.quant_noise_pq_block_size, **kwargs,
        )

    def _maybe_norm(self, norm: nn.Module, x: Tensor, before: bool) -> Tensor:
        return norm(x) if self.normalize_before == before else x

    def _ffn(self, x: Tensor) -> Tensor:
        residual = x
        x = self._maybe_norm(self.final_layer_norm, x, True)
        x = self.activation_dropout_module(self.activation_fn(self.fc1(x)))
        if self.ffn_layernorm is not None:
            x = self.ffn_layernorm(x)
        x = self.dropout_module(self.fc2(x))
        if self.adapter is not None:
            x = self.adapter(x)
        if self.w_resid is not None:
            residual = self.w_resid * residual
        x = residual + self.drop_path(x)
        return self._maybe_norm(self.final_layer_norm, x, False)

    def _attention_residual(self, x: Tensor, residual: Tensor, post_ln: Optional[nn.Module]) -> Tensor:
        if post_ln is not None:
            x = post_ln(x)
        return residual + self.drop_path(self.dropout_module(x))


class EncoderLayer(_Block):
    """Self-attention + FFN block of the OFA encoder."""

    legacy_layer_norms = {"0": "self_attn_layer_norm", "1": "final_layer_norm"}

    def __init__(self, args, drop_path_rate: float = 0.0):
        super().__init__()
        dim = args.encoder_embed_dim
        self._init_common(args, dim, args.encoder_ffn_embed_dim, args.encoder_normalize_before, drop_path_rate)
        self.self_attn = self._attention(args, dim, args.encoder_attention_heads, self_attention=True)
        self.self_attn_layer_norm = LayerNorm(dim)
        self.fc1 = _linear(dim, args.encoder_ffn_embed_dim, args)
        self.fc2 = _linear(args.encoder_ffn_embed_dim, dim, args)
        self.attn_ln = LayerNorm(dim) if getattr(args, "scale_attn", False) else None
        self.ffn_layernorm = LayerNorm(args.encoder_ffn_embed_dim) if getattr(args, "scale_fc", False) else None
        self.final_layer_norm = LayerNorm(dim)

    def forward(self, x: Tensor, encoder_padding_mask: Optional[Tensor], self_attn_bias: Optional[Tensor] = None,
                prompt_kv: Optional[Tensor] = None) -> Tensor:
        """`x [S,B,D]`; `self_attn_bias` `[B|1, H, S, S]` already holds padding (-inf) where needed."""
        residual = x
        x = self._maybe_norm(self.self_attn_layer_norm, x, True)
        x, _ = self.self_attn(x, x, x, key_padding_mask=encoder_padding_mask, attn_bias=self_attn_bias,
                              prompt_kv=prompt_kv)
        x = self._attention_residual(x, residual, self.attn_ln)
        x = self._maybe_norm(self.self_attn_layer_norm, x, False)
        return self._ffn(x)


class DecoderLayer(_Block):
    """Masked self-attention + cross-attention + FFN block of the OFA decoder."""

    legacy_layer_norms = {"0": "self_attn_layer_norm", "1": "encoder_attn_layer_norm", "2": "final_layer_norm"}

    def __init__(self, args, drop_path_rate: float = 0.0):
        super().__init__()
        dim = args.decoder_embed_dim
        self._init_common(args, dim, args.decoder_ffn_embed_dim, args.decoder_normalize_before, drop_path_rate)
        self.self_attn = self._attention(args, dim, args.decoder_attention_heads, self_attention=True)
        scale_attn = getattr(args, "scale_attn", False)
        self.self_attn_ln = LayerNorm(dim) if scale_attn else None
        self.cross_attn_ln = LayerNorm(dim) if scale_attn else None
        self.self_attn_layer_norm = LayerNorm(dim)
        self.encoder_attn = self._attention(args, dim, args.decoder_attention_heads, encoder_decoder_attention=True)
        self.encoder_attn_layer_norm = LayerNorm(dim)
        self.ffn_layernorm = LayerNorm(args.decoder_ffn_embed_dim) if getattr(args, "scale_fc", False) else None
        self.fc1 = _linear(dim, args.decoder_ffn_embed_dim, args)
        self.fc2 = _linear(args.decoder_ffn_embed_dim, dim, args)
        self.final_layer_norm = LayerNorm(dim)

    def forward(
        self,
        x: Tensor,
        encoder_out: Optional[Tensor],
        encoder_padding_mask: Optional[Tensor],
        incremental_state=None,
        self_attn_mask: Optional[Tensor] = None,
        self_attn_padding_mask: Optional[Tensor] = None,
        self_attn_bias: Optional[Tensor] = None,
        cross_attn_bias: Optional[Tensor] = None,
        prompt_kv: Optional[Tensor] = None,
        need_attn: bool = False,
    ):
        """Returns `(x [T,B,D], cross-attention weights [B,T,S] or None)`."""
        residual = x
        x = self._maybe_norm(self.self_attn_layer_norm, x, True)
        x, _ = self.self_attn(x, x, x, key_padding_mask=self_attn_padding_mask, incremental_state=incremental_state,
                              attn_mask=self_attn_mask, attn_bias=self_attn_bias, prompt_kv=prompt_kv)
        x = self._attention_residual(x, residual, self.self_attn_ln)
        x = self._maybe_norm(self.self_attn_layer_norm, x, False)
        attn = None
        if encoder_out is not None:
            residual = x
            x = self._maybe_norm(self.encoder_attn_layer_norm, x, True)
            x, attn = self.encoder_attn(x, encoder_out, encoder_out, key_padding_mask=encoder_padding_mask,
                                        incremental_state=incremental_state, static_kv=True,
                                        need_weights=need_attn, attn_bias=cross_attn_bias)
            x = self._attention_residual(x, residual, self.cross_attn_ln)
            x = self._maybe_norm(self.encoder_attn_layer_norm, x, False)
        return self._ffn(x), attn

