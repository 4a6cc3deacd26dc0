"""The OFA encoder: ResNet image patches + text tokens, decoupled position bias, transformer layers.

Sequence order is `[image patches] [text tokens]`. Absolute positions enter only through an attention
bias computed once per forward (`pos_q_linear`/`pos_k_linear` on layer-normed position embeddings)
plus per-layer 1-D (text) and 2-D (image) relative-position tables. The layer-normed position
embeddings are handed to the decoder as `position_embeddings`.
"""
import random
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairseq.models import FairseqEncoder
from fairseq.modules import LayerNorm
from fairseq.modules.fairseq_dropout import FairseqDropout

from .embedding import embedding_table, input_quant_noise, rel_pos_tables, stack_drop_path_rates
from .layers import EncoderLayer
from .position import image_grid_ids, register_relative_buckets
from .prompt import PromptEncoder
from .resnet import build_resnet


class OFAEncoder(FairseqEncoder):
    """Encoder of the `ofa` model. `embed_tokens` is shared with the decoder (`--share-all-embeddings`)."""

    def __init__(self, args, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        self.args = args
        self.register_buffer("version", torch.Tensor([3]))
        dim = embed_tokens.embedding_dim
        self.padding_idx = embed_tokens.padding_idx
        self.max_source_positions = args.max_source_positions
        self.num_attention_heads = args.encoder_attention_heads
        self.image_bucket_size = args.image_bucket_size
        self.embed_scale = 1.0 if args.no_scale_embedding else dim ** 0.5
        self.entangle_position_embedding = args.entangle_position_embedding
        self.dropout_module = FairseqDropout(args.dropout, module_name=self.__class__.__name__)
        self.encoder_layerdrop = args.encoder_layerdrop
        num_image_rel = register_relative_buckets(self, args.token_bucket_size, args.max_source_positions, args.image_bucket_size)

        if getattr(args, "encoder_prompt", False):
            self.encoder_prompt_encoder = PromptEncoder(
                args.encoder_prompt_length, args.encoder_prompt_projection, dim, args.encoder_prompt_dim,
                args.encoder_layers, args.encoder_attention_heads)
        else:
            self.encoder_prompt_encoder = None

        self.embed_tokens = embed_tokens
        self.layernorm_embedding = LayerNorm(dim) if args.layernorm_embedding else None
        self.type_embedding = embedding_table(2, dim, None) if args.add_type_embedding else None
        self.embed_images = build_resnet(args)
        self.image_proj = nn.Linear(1024, dim)
        self.patch_layernorm_embedding = LayerNorm(dim) if args.patch_layernorm_embedding else None
        self.quant_noise = input_quant_noise(dim, args)
        self.embed_positions = embedding_table(args.max_source_positions + 2, dim, None)
        self.embed_image_positions = embedding_table(args.image_bucket_size ** 2 + 1, dim, None)
        self.pos_ln = LayerNorm(dim)
        self.image_pos_ln = LayerNorm(dim)
        self.pos_scaling = float(dim / args.encoder_attention_heads * args.attn_scale_factor) ** -0.5
        self.pos_q_linear = nn.Linear(dim, dim)
        self.pos_k_linear = nn.Linear(dim, dim)

        rates = stack_drop_path_rates(args.encoder_drop_path_rate, args.encoder_layers)
        self.layers = nn.ModuleList([EncoderLayer(args, drop_path_rate=rate) for rate in rates])
        self.num_layers = len(self.layers)
        self.layer_norm = LayerNorm(dim) if args.encoder_normalize_before else None
        self.token_rel_pos_table_list, self.image_rel_pos_table_list = rel_pos_tables(
            args.encoder_layers, args.token_bucket_size, num_image_rel, args.encoder_attention_heads)

    # ------------------------------------------------------------------ embeddings
    def _embed_text(self, src_tokens: Tensor, text_pos: Tensor, token_embeddings: Optional[Tensor]) -> Tensor:
        x = self.embed_tokens(src_tokens) if token_embeddings is None else token_embeddings
        x = self.embed_scale * x
        if self.entangle_position_embedding:
            x = x + text_pos
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[0]
        return self._finish_embedding(x, self.layernorm_embedding)

    def _finish_embedding(self, x: Tensor, norm: Optional[nn.Module]) -> Tensor:
        if norm is not None:
            x = norm(x)
        x = self.dropout_module(x)
        return self.quant_noise(x) if self.quant_noise is not None else x

    def _image_position_embeddings(self, height: int, width: int, device) -> Tensor:
        """`[1, height*width, D]` absolute image position embeddings (interpolated if asked and larger than trained)."""
        orig = self.args.orig_patch_image_size // 16
        if getattr(self.args, "interpolate_position", False) and height * width > orig * orig:
            old = self.embed_image_positions(image_grid_ids(orig, orig, self.image_bucket_size, device))
            old = old.reshape(1, orig, orig, -1).permute(0, 3, 1, 2)
            new = F.interpolate(old, size=(height, width), mode="bilinear")
            return new.permute(0, 2, 3, 1).reshape(1, height * width, -1)
        ids = image_grid_ids(height, width, self.image_bucket_size, device)
        return self.embed_image_positions(ids).unsqueeze(0)

    def _embed_images(self, patch_images: Tensor, patch_masks: Optional[Tensor], sample_patch_num: Optional[int]):
        """Image tokens, their position embeddings, grid ids (`[B|1, N]`) and padding mask (`[B, N]`)."""
        weight = self.embed_images.conv1.weight
        features = self.embed_images(patch_images.to(dtype=weight.dtype))  # (B, 1024, h, w)
        bsz, _, height, width = features.shape
        features = features.flatten(2).transpose(1, 2)  # (B, N, 1024)
        num_patches = height * width
        grid_ids = image_grid_ids(height, width, self.image_bucket_size, features.device).unsqueeze(0)
        image_pos = self._image_position_embeddings(height, width, features.device)
        if sample_patch_num is not None and sample_patch_num < num_patches:
            # a random subset of patches per row, drawn from torch's generator (which fairseq seeds per update,
            # so a resumed run draws the same subsets; the reference used Python's `random.sample`)
            order = torch.rand(bsz, num_patches, device=features.device).argsort(dim=1)[:, :sample_patch_num]
            features = features.gather(1, order.unsqueeze(2).expand(-1, -1, features.size(2)))
            grid_ids = grid_ids.expand(bsz, -1).gather(1, order)
            image_pos = image_pos.expand(bsz, -1, -1).gather(1, order.unsqueeze(2).expand(-1, -1, image_pos.size(2)))
            num_patches = sample_patch_num
        padding = torch.zeros(bsz, num_patches, dtype=torch.bool, device=features.device)
        if patch_masks is not None:
            padding[~patch_masks.bool()] = True
        x = self.embed_scale * self.image_proj(features)
        if self.entangle_position_embedding:
            x = x + image_pos
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[1]
        return self._finish_embedding(x, self.patch_layernorm_embedding), image_pos, grid_ids, padding

    # ------------------------------------------------------------------ position biases
    def _abs_pos_bias(self, pos: Tensor) -> Tensor:
        """`[b, S, D]` layer-normed position embeddings -> `[b, H, S, S]` absolute position bias."""
        b, length, _ = pos.shape
        q = self.pos_q_linear(pos).view(b, length, self.num_attention_heads, -1).transpose(1, 2) * self.pos_scaling
        k = self.pos_k_linear(pos).view(b, length, self.num_attention_heads, -1).transpose(1, 2)
        return torch.matmul(q, k.transpose(2, 3))

    def _token_rel_bias(self, length: int, idx: int) -> Tensor:
        bucket = self.token_rp_bucket[:length, :length]
        return F.embedding(bucket, self.token_rel_pos_table_list[idx].weight).permute(2, 0, 1)  # (H, L, L)

    def _image_rel_bias(self, grid_ids: Tensor, idx: int) -> Tensor:
        bucket = self.image_rp_bucket[grid_ids[:, :, None], grid_ids[:, None, :]]  # (b, N, N)
        return F.embedding(bucket, self.image_rel_pos_table_list[idx].weight).permute(0, 3, 1, 2)  # (b, H, N, N)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        src_tokens: Tensor,
        src_lengths: Optional[Tensor] = None,
        patch_images: Optional[Tensor] = None,
        patch_images_2: Optional[Tensor] = None,
        patch_masks: Optional[Tensor] = None,
        code_masks: Optional[Tensor] = None,
        return_all_hiddens: bool = False,
        token_embeddings: Optional[Tensor] = None,
        sample_patch_num: Optional[int] = None,
    ) -> Dict[str, List[Tensor]]:
        """Encode `src_tokens [B, L]` (and `patch_images [B, 3, P, P]`). `code_masks` is accepted and ignored."""
        if patch_images_2 is not None:
            raise ValueError("patch_images_2 is not supported: OFA/BiomedGPT checkpoints have a 2-row type embedding "
                             "(text, image), so a second image has no type id")
        bsz, src_len = src_tokens.shape
        device = src_tokens.device
        text_padding = src_tokens.eq(self.padding_idx)
        text_pos = self.embed_positions(torch.arange(src_len, device=device)).unsqueeze(0)  # (1, L, D)
        x = self._embed_text(src_tokens, text_pos, token_embeddings)
        pos = self.pos_ln(text_pos)
        padding, grid_ids = text_padding, None
        if patch_images is not None:
            image_x, image_pos, grid_ids, image_padding = self._embed_images(patch_images, patch_masks, sample_patch_num)
            x = torch.cat([image_x, x], dim=1)
            image_pos = self.image_pos_ln(image_pos)
            pos = torch.cat([image_pos, pos.expand(image_pos.size(0), -1, -1)], dim=1)
            padding = torch.cat([image_padding, text_padding], dim=1)
        has_pads = bool(padding.any())
        if has_pads:
            x = x * (1 - padding.unsqueeze(-1).type_as(x))
        x = x.transpose(0, 1)  # (S, B, D)
        seq_len = x.size(0)

        base_bias = self._abs_pos_bias(pos)  # (b, H, S, S); b = 1 unless patches were sampled
        if has_pads:
            base_bias = base_bias.masked_fill(padding[:, None, None, :], float("-inf"))
        prompt_kv_list = None
        if self.encoder_prompt_encoder is not None:
            prompt_kv_list = self.encoder_prompt_encoder(bsz, device)

        encoder_states = [x] if return_all_hiddens else []
        num_image = seq_len - src_len
        for idx, layer in enumerate(self.layers):
            if self.training and self.encoder_layerdrop > 0 and random.random() < self.encoder_layerdrop:
                continue
            bias = base_bias.clone()
            bias[:, :, num_image:, num_image:] += self._token_rel_bias(src_len, idx)
            if grid_ids is not None:
                bias[:, :, :num_image, :num_image] += self._image_rel_bias(grid_ids, idx)
            prompt_kv = prompt_kv_list[idx] if prompt_kv_list is not None else None
            x = layer(x, encoder_padding_mask=None, self_attn_bias=bias, prompt_kv=prompt_kv)
            if return_all_hiddens:
                encoder_states.append(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return {
            "encoder_out": [x],
            "encoder_padding_mask": [padding],
            "encoder_embedding": [],
            "encoder_states": encoder_states,
            "src_tokens": [],
            "src_lengths": [],
            "position_embeddings": [pos.expand(bsz, -1, -1)],
        }

    @torch.jit.export
    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        """Index-select every batch-major entry (beam search / ensembles)."""
        batch_dim = {"encoder_out": 1, "encoder_states": 1}
        return {
            key: [t.index_select(batch_dim.get(key, 0), new_order) for t in values]
            for key, values in encoder_out.items()
        }

    def max_positions(self) -> int:
        return self.max_source_positions
