"""Building blocks of the taming-transformers VQ-GAN autoencoder: ResNet/attention blocks, Encoder, Decoder.

The module and attribute names follow the released checkpoint's state-dict keys (`encoder.down.0.block.1.conv2.weight`,
`decoder.up.3.attn.2.proj_out.bias`, ...), so a released `state_dict` loads without renaming. Architecture facts:
shared/spec/vqgan/README.md §2.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, eps 1e-6, affine (the only normalisation of the model)."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1)


def conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1)


class ResnetBlock(nn.Module):
    """`s(x) + conv2(swish(norm2(conv1(swish(norm1(x))))))`; `s` is a 1x1 conv only when the width changes."""

    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = conv3x3(c_in, c_out)
        self.norm2 = group_norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(c_out, c_out)
        if c_in != c_out:
            self.nin_shortcut = conv1x1(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions (width C, scale 1/sqrt(C)), residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = conv1x1(channels, channels)
        self.k = conv1x1(channels, channels)
        self.v = conv1x1(channels, channels)
        self.proj_out = conv1x1(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)

        def heads(t):  # [B, C, H, W] -> [B, 1, N, C]
            return t.reshape(b, 1, c, h * w).transpose(2, 3)

        o = F.scaled_dot_product_attention(heads(self.q(n)), heads(self.k(n)), heads(self.v(n)))
        o = o.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(o)


class Downsample(nn.Module):
    """Halve H and W: zero-pad one column right and one row bottom, then a 3x3 stride-2 conv without padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour x2, then a 3x3 conv (padding 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ResNet blocks (`block.i`), each followed by `attn.i` when the level has attention."""

    def __init__(self, widths: Sequence[tuple], with_attn: bool, dropout: float):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in, c_out, dropout) for c_in, c_out in widths)
        self.attn = nn.ModuleList(AttnBlock(c_out) for _, c_out in widths) if with_attn else nn.ModuleList()

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def _attention_levels(resolution: int, n_levels: int, attn_resolutions: Sequence[int]):
    """Level i has attention when its nominal resolution `resolution / 2**i` is listed (fixed at construction)."""
    wanted = {int(r) for r in attn_resolutions}
    return [resolution // 2 ** level in wanted for level in range(n_levels)]


class Encoder(nn.Module):
    """Image [B, in_channels, H, W] -> latent [B, z_channels (x2 with double_z), H/2^(L-1), W/2^(L-1)]."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = False, dropout: float = 0.0,
                 **_ignored):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        with_attn = _attention_levels(resolution, len(ch_mult), attn_resolutions)
        self.conv_in = conv3x3(in_channels, ch)
        self.down = nn.ModuleList()
        c_in = ch
        for level, c_out in enumerate(widths):
            pairs = [(c_in if i == 0 else c_out, c_out) for i in range(num_res_blocks)]
            stage = _Level(pairs, with_attn[level], dropout)
            if level != len(widths) - 1:
                stage.downsample = Downsample(c_out)
            self.down.append(stage)
            c_in = c_out
        self.mid = _Middle(c_in, dropout)
        self.norm_out = group_norm(c_in)
        self.conv_out = conv3x3(c_in, 2 * z_channels if double_z else z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage.run_blocks(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent [B, z_channels, h, w] -> image [B, out_ch, h*2^(L-1), w*2^(L-1)] (not clamped).

    Levels run from the coarsest to level 0, but `up.i` is indexed by level (`up.0` = full resolution)."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, z_channels: int, dropout: float = 0.0, **_ignored):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        with_attn = _attention_levels(resolution, len(ch_mult), attn_resolutions)
        c_in = widths[-1]
        self.conv_in = conv3x3(z_channels, c_in)
        self.mid = _Middle(c_in, dropout)
        stages = {}
        for level in reversed(range(len(widths))):
            c_out = widths[level]
            pairs = [(c_in if i == 0 else c_out, c_out) for i in range(num_res_blocks + 1)]
            stage = _Level(pairs, with_attn[level], dropout)
            if level != 0:
                stage.upsample = Upsample(c_out)
            stages[level] = stage
            c_in = c_out
        self.up = nn.ModuleList(stages[level] for level in range(len(widths)))
        self.norm_out = group_norm(c_in)
        self.conv_out = conv3x3(c_in, out_ch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            h = stage.run_blocks(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
