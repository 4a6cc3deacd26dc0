"""Location tokens `<bin_k>` (REFERENCE §4.3): pixel coordinates <-> bins, shared by grounding and detection.

`k = round(coord / max_image_size * (num_bins - 1))` with coordinates in resized-image pixels, clamped to
`[0, max_image_size]`; dequantisation is `k / (num_bins - 1) * max_image_size`.
"""
from typing import Sequence


def quantize(coord: float, max_image_size: int, num_bins: int) -> int:
    return int(round(min(max(coord, 0.0), max_image_size) / max_image_size * (num_bins - 1)))


def dequantize(bin_index, max_image_size: int, num_bins: int):
    return bin_index / (num_bins - 1) * max_image_size


def box_to_bins(box: Sequence[float], max_image_size: int, num_bins: int) -> str:
    """`(x0, y0, x1, y1)` -> `"<bin_a> <bin_b> <bin_c> <bin_d>"` (dictionary symbols, not BPE text)."""
    return " ".join(f"<bin_{quantize(c, max_image_size, num_bins)}>" for c in box)
