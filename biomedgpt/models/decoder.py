"""The OFA decoder: text or image-code tokens, decoupled self/cross position biases, incremental decoding.

Rows whose `code_masks` entry is True are image-code sequences: they use the image position table
(`image_position_idx` window), the image position LayerNorm, the 2-D relative-position tables and the
code embedding LayerNorm. Position biases are computed once per forward and shared by all layers; when
decoding incrementally only the newest query row is computed, and the cross-attention position keys are
cached with the other incremental state.
"""
import random
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairseq.models import FairseqIncrementalDecoder
from fairseq.modules import LayerNorm
from fairseq.modules.fairseq_dropout import FairseqDropout

from .embedding import embedding_table, input_quant_noise, rel_pos_tables, stack_drop_path_rates
from .layers import DecoderLayer
from .position import code_position_index, register_relative_buckets
from .prompt import PromptEncoder

STREAMED_ROWS = 8  # up to this many logit rows, the CPU output projection streams the weight (see output_layer)


class OFADecoder(FairseqIncrementalDecoder):
    """Decoder of the `ofa` model; its output projection is tied to `embed_tokens`."""

    def __init__(self, args, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        self.args = args
        self.register_buffer("version", torch.Tensor([3]))
        dim = embed_tokens.embedding_dim
        self.embed_dim = dim
        self.padding_idx = embed_tokens.padding_idx
        self.max_target_positions = args.max_target_positions
        self.num_attention_heads = args.decoder_attention_heads
        self.embed_scale = 1.0 if args.no_scale_embedding else dim ** 0.5
        self.add_positions_to_input = not args.disable_entangle
        self.dropout_module = FairseqDropout(args.dropout, module_name=self.__class__.__name__)
        self.decoder_layerdrop = args.decoder_layerdrop
        num_image_rel = register_relative_buckets(self, args.token_bucket_size, args.max_target_positions, args.image_bucket_size)
        self.register_buffer("image_position_idx", code_position_index(
            args.code_image_size // 8, args.image_bucket_size, args.max_target_positions + 2))

        if getattr(args, "decoder_prompt", False):
            self.decoder_prompt_encoder = PromptEncoder(
                args.decoder_prompt_length, args.decoder_prompt_projection, dim, args.decoder_prompt_dim,
                args.decoder_layers, args.decoder_attention_heads)
        else:
            self.decoder_prompt_encoder = None

        self.embed_tokens = embed_tokens
        self.quant_noise = input_quant_noise(dim, args)
        self.layernorm_embedding = LayerNorm(dim) if args.layernorm_embedding else None
        self.embed_positions = embedding_table(args.max_target_positions + 2, dim, None)
        self.embed_image_positions = embedding_table(args.image_bucket_size ** 2 + 1, dim, None)
        self.pos_ln = LayerNorm(dim)
        self.image_pos_ln = LayerNorm(dim)
        self.pos_scaling = float(dim / args.decoder_attention_heads * args.attn_scale_factor) ** -0.5
        self.self_pos_q_linear = nn.Linear(dim, dim)
        self.self_pos_k_linear = nn.Linear(dim, dim)
        self.cross_pos_q_linear = nn.Linear(dim, dim)
        self.cross_pos_k_linear = nn.Linear(dim, dim)
        self.code_layernorm_embedding = LayerNorm(dim) if args.code_layernorm_embedding else None

        rates = stack_drop_path_rates(args.decoder_drop_path_rate, args.decoder_layers)
        self.layers = nn.ModuleList([DecoderLayer(args, drop_path_rate=rate) for rate in rates])
        self.num_layers = len(self.layers)
        self.layer_norm = LayerNorm(dim) if args.decoder_normalize_before else None
        self.output_projection = nn.Linear(dim, len(dictionary), bias=False)
        if args.share_decoder_input_output_embed:
            self.output_projection.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0, std=dim ** -0.5)
        self.token_rel_pos_table_list, self.image_rel_pos_table_list = rel_pos_tables(
            args.decoder_layers, args.token_bucket_size, num_image_rel, args.decoder_attention_heads)

    # ------------------------------------------------------------------ position biases
    def _split_heads(self, x: Tensor) -> Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_attention_heads, -1).transpose(1, 2)  # (b, H, L, hd)

    def _select_rows(self, code_masks: Optional[Tensor], text: Tensor, image: Optional[Tensor]) -> Tensor:
        """Per batch row: the image-code variant where `code_masks` is True, else the text variant."""
        if image is None:
            return text
        shape = (-1,) + (1,) * (text.dim() - 1)
        return torch.where(code_masks.view(shape), image, text)

    def _position_biases(self, length: int, query_rows: slice, code_masks: Optional[Tensor],
                         src_pos_embed: Tensor, incremental_state):
        """Absolute self/cross position biases `[b, H, Tq, T]` / `[B, H, Tq, S]` and the raw query-row embeddings."""
        device = src_pos_embed.device
        use_code = code_masks is not None and bool(code_masks.any())
        text_raw = self.embed_positions(torch.arange(length, device=device)).unsqueeze(0)  # (1, T, D)
        image_raw = None
        if use_code:
            image_raw = self.embed_image_positions(self.image_position_idx[:length]).unsqueeze(0)
        cross_k_t = self._cross_position_keys(src_pos_embed, incremental_state)

        def biases(norm: nn.Module, raw: Tensor):
            pos = norm(raw)
            q_self = self._split_heads(self.self_pos_q_linear(pos[:, query_rows])) * self.pos_scaling
            k_self = self._split_heads(self.self_pos_k_linear(pos))
            q_cross = self._split_heads(self.cross_pos_q_linear(pos[:, query_rows])) * self.pos_scaling
            return torch.matmul(q_self, k_self.transpose(2, 3)), torch.matmul(q_cross, cross_k_t)

        self_text, cross_text = biases(self.pos_ln, text_raw)
        self_image = cross_image = None
        if use_code:
            self_image, cross_image = biases(self.image_pos_ln, image_raw)
        self_bias = self._select_rows(code_masks, self_text, self_image)
        cross_bias = self._select_rows(code_masks, cross_text, cross_image)
        raw = self._select_rows(code_masks, text_raw, image_raw)[:, query_rows]
        return self_bias, cross_bias, raw, use_code

    def _cross_position_keys(self, src_pos_embed: Tensor, incremental_state) -> Tensor:
        """Transposed cross-attention position keys `[B, H, hd, S]`, computed once per decoding session."""
        if incremental_state is not None:
            cached = self.get_incremental_state(incremental_state, "cross_pos")
            if cached is not None:
                return cached["key"]
        key = self._split_heads(self.cross_pos_k_linear(src_pos_embed)).transpose(2, 3).contiguous()
        if incremental_state is not None:
            self.set_incremental_state(incremental_state, "cross_pos", {"key": key})
        return key

    def _rel_bias(self, length: int, query_rows: slice, code_masks: Optional[Tensor], use_code: bool, idx: int) -> Tensor:
        """Relative self-attention bias of layer `idx`: `[H, Tq, T]`, or `[B, H, Tq, T]` for mixed rows."""
        text = image = None
        if not use_code or not bool(code_masks.all()):
            bucket = self.token_rp_bucket[:length, :length][query_rows]
            text = F.embedding(bucket, self.token_rel_pos_table_list[idx].weight).permute(2, 0, 1)
        if use_code:
            ids = self.image_position_idx[:length]
            bucket = self.image_rp_bucket[ids[query_rows][:, None], ids[None, :]]
            image = F.embedding(bucket, self.image_rel_pos_table_list[idx].weight).permute(2, 0, 1)
        if text is None:
            return image
        if image is None:
            return text
        return torch.where(code_masks.view(-1, 1, 1, 1), image.unsqueeze(0), text.unsqueeze(0))

    # ------------------------------------------------------------------ forward
    def _embed(self, tokens: Tensor, raw_pos: Tensor, code_masks: Optional[Tensor], use_code: bool) -> Tensor:
        x = self.embed_scale * self.embed_tokens(tokens)
        if self.quant_noise is not None:
            x = self.quant_noise(x)
        if self.add_positions_to_input:
            x = x + raw_pos
        if self.layernorm_embedding is not None:
            if not use_code or self.code_layernorm_embedding is None:
                x = self.layernorm_embedding(x)
            elif bool(code_masks.all()):
                x = self.code_layernorm_embedding(x)
            else:
                x = torch.where(code_masks.view(-1, 1, 1), self.code_layernorm_embedding(x), self.layernorm_embedding(x))
        return self.dropout_module(x)

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        code_masks: Optional[Tensor] = None,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        alignment_layer: Optional[int] = None,
        return_all_hiddens: bool = False,
    ):
        """Decoder features `[B, T, D]` (only the newest position when decoding incrementally)."""
        bsz, length = prev_output_tokens.shape
        incremental = incremental_state is not None
        query_rows = slice(length - 1, length) if incremental else slice(0, length)
        enc = encoder_out["encoder_out"][0] if encoder_out and encoder_out["encoder_out"] else None
        enc_padding = (encoder_out["encoder_padding_mask"][0]
                       if encoder_out and encoder_out["encoder_padding_mask"] else None)
        src_pos_embed = encoder_out["position_embeddings"][0]

        self_bias, cross_bias, raw_pos, use_code = self._position_biases(
            length, query_rows, code_masks, src_pos_embed, incremental_state)
        tokens = prev_output_tokens[:, query_rows]
        x = self._embed(tokens, raw_pos, code_masks, use_code).transpose(0, 1)  # (Tq, B, D)

        self_padding = None
        if incremental:
            if tokens.eq(self.padding_idx).any():
                self_padding = tokens.eq(self.padding_idx)
        else:
            causal = torch.full((length, length), float("-inf"), device=x.device, dtype=self_bias.dtype).triu(1)
            self_bias = self_bias + causal
            if prev_output_tokens.eq(self.padding_idx).any():
                pad = prev_output_tokens.eq(self.padding_idx)[:, None, None, :]
                self_bias = self_bias.masked_fill(pad, float("-inf"))
        if enc_padding is not None and bool(enc_padding.any()):
            cross_bias = cross_bias.masked_fill(enc_padding[:, None, None, :], float("-inf"))

        prompt_kv_list = None
        if self.decoder_prompt_encoder is not None:
            prompt_kv_list = self.decoder_prompt_encoder(bsz, x.device)

        attn = None
        inner_states = [x]
        for idx, layer in enumerate(self.layers):
            if self.training and self.decoder_layerdrop > 0 and random.random() < self.decoder_layerdrop:
                continue
            layer_bias = self_bias + self._rel_bias(length, query_rows, code_masks, use_code, idx)
            prompt_kv = prompt_kv_list[idx] if prompt_kv_list is not None else None
            x, layer_attn = layer(
                x, enc, None, incremental_state=incremental_state, self_attn_padding_mask=self_padding,
                self_attn_bias=layer_bias, cross_attn_bias=cross_bias, prompt_kv=prompt_kv,
                need_attn=alignment_layer == idx,
            )
            if layer_attn is not None:
                attn = layer_attn.float().to(x)
            if return_all_hiddens:
                inner_states.append(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x.transpose(0, 1), {"attn": [attn], "inner_states": inner_states}

    def forward(
        self,
        prev_output_tokens: Tensor,
        code_masks: Optional[Tensor] = None,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        features_only: bool = False,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
        src_lengths: Optional[Any] = None,
        return_all_hiddens: bool = False,
    ):
        """Returns `(logits [B, T, V] or features [B, T, D], {"attn": [...], "inner_states": [...]})`.

        Cross-attention weights are returned only for an explicit `alignment_layer` (computing them
        costs the fast attention kernel).
        """
        x, extra = self.extract_features(prev_output_tokens, code_masks, encoder_out, incremental_state,
                                         alignment_layer, return_all_hiddens)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def output_layer(self, features: Tensor) -> Tensor:
        """Logits `features @ W^T`.

        For the few rows of CPU decoding (`<= STREAMED_ROWS`) this is computed as `(W @ features^T)^T`: the same
        dot products, but the BLAS streams the `[V, D]` weight row by row, 2-5x faster for 2-8 rows on the
        project's CPUs (`bench/bench_output_projection.py`). Larger batches use the plain linear layer.
        """
        weight = self.output_projection.weight
        flat = features.reshape(-1, features.size(-1))
        if features.device.type != "cpu" or not 1 < flat.size(0) <= STREAMED_ROWS:
            return self.output_projection(features)
        logits = torch.matmul(weight, flat.t()).t().contiguous()
        return logits.view(*features.shape[:-1], weight.size(0))

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        cached = self.get_incremental_state(incremental_state, "cross_pos")
        if cached is not None:
            self.set_incremental_state(incremental_state, "cross_pos",
                                       {"key": cached["key"].index_select(0, new_order)})

    def max_positions(self) -> int:
        return self.max_target_positions
