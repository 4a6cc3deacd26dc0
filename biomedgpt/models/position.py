"""Relative-position buckets and image grid indices used by the OFA encoder and decoder.

Pure functions of the configuration (bucket sizes, grid side): they build the int64 buffers that the
released checkpoints store (`token_rp_bucket`, `image_rp_bucket`, `image_position_idx`) and the flattened
grid ids of image patches. No learned parameters live here.
"""
import math

import torch
from torch import nn


def token_bucket_positions(bucket_size: int, max_position: int) -> torch.Tensor:
    """`[max_position, max_position]` bucket ids of the 1-D relative distance `i - j` (0 .. 2*bucket_size-2).

    Distances up to `bucket_size // 2` get their own bucket; larger ones share log-spaced buckets.
    """
    context = torch.arange(max_position, dtype=torch.long)[:, None]
    memory = torch.arange(max_position, dtype=torch.long)[None, :]
    relative = context - memory
    sign = torch.sign(relative)
    mid = bucket_size // 2
    abs_pos = torch.where((relative < mid) & (relative > -mid), torch.full_like(relative, mid - 1), relative.abs())
    log_pos = torch.ceil(
        torch.log(abs_pos / mid) / math.log((max_position - 1) / mid) * (mid - 1)
    ).long() + mid
    bucket = torch.where(abs_pos.le(mid), relative, log_pos * sign)
    return bucket + bucket_size - 1


def image_bucket_positions(grid: int, num_relative: int) -> torch.Tensor:
    """`[grid*grid+1, grid*grid+1]` bucket ids of 2-D relative offsets between grid cells.

    Index 0 is the special (cls) position: row 0 gets `num_relative - 3`, column 0 gets `num_relative - 2`,
    and the corner `num_relative - 1`.
    """
    coords_h = torch.arange(grid)
    coords_w = torch.arange(grid)
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij")).flatten(1)  # (2, grid*grid)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (grid - 1)  # (N, N, 2)
    index = torch.zeros(grid * grid + 1, grid * grid + 1, dtype=torch.long)
    index[1:, 1:] = relative[:, :, 0] * (2 * grid - 1) + relative[:, :, 1]
    index[0, 0:] = num_relative - 3
    index[0:, 0] = num_relative - 2
    index[0, 0] = num_relative - 1
    return index


def image_grid_ids(height: int, width: int, grid: int, device=None) -> torch.Tensor:
    """Flattened grid id `r * grid + c + 1` of every patch of an `height x width` patch map, row-major."""
    rows = torch.arange(height, device=device)[:, None] * grid
    cols = torch.arange(width, device=device)[None, :]
    return (rows + cols + 1).reshape(-1)


def code_position_index(code_grid: int, grid: int, length: int) -> torch.Tensor:
    """Decoder position ids of image-code tokens (`length` entries).

    `[0]` for BOS, then the grid ids of the top-left `code_grid x code_grid` window, then `length - 2`
    (1024 for the released models) for every later position, as the reference does.
    """
    window = image_grid_ids(code_grid, code_grid, grid)
    tail = torch.full((length - 1 - window.numel(),), length - 2, dtype=torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), window, tail])


def register_relative_buckets(module: nn.Module, token_bucket_size: int, max_positions: int, image_grid: int) -> int:
    """Register the `token_rp_bucket` and `image_rp_bucket` buffers on `module`; return the image table size."""
    num_image_relative = (2 * image_grid - 1) ** 2 + 3
    module.register_buffer("token_rp_bucket", token_bucket_positions(token_bucket_size, max_positions))
    module.register_buffer("image_rp_bucket", image_bucket_positions(image_grid, num_image_relative))
    return num_image_relative
