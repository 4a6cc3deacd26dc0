"""Image transforms that move boxes with the pixels (pretraining's grounding and detection samples).

Boxes are `float` arrays `[N, 4]` of `(x0, y0, x1, y1)` in pixels. Every random choice takes a
`numpy.random.Generator`, so a sample is a function of its seed (REFERENCE §4.2 lists the reference's versions).
"""
from typing import Tuple

import numpy as np
from PIL import Image

BICUBIC = Image.BICUBIC


def random_resize(image: Image.Image, boxes: np.ndarray, low: int, high: int, max_size: int,
                  rng: np.random.Generator) -> Tuple[Image.Image, np.ndarray]:
    """Shorter side to a random size in `[low, high]`, both sides then capped at `max_size` (bicubic)."""
    target = int(rng.integers(low, max(low, high) + 1))
    width, height = image.size
    scale = target / min(width, height)
    scale = min(scale, max_size / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, BICUBIC), boxes * np.array([size[0] / width, size[1] / height] * 2)


def crop(image: Image.Image, boxes: np.ndarray, left: int, top: int, size: Tuple[int, int]):
    """Crop `size = (w, h)` at `(left, top)` (zero padding outside the image); boxes shifted and clipped."""
    cropped = image.crop((left, top, left + size[0], top + size[1]))
    moved = boxes - np.array([left, top, left, top])
    moved[:, 0::2] = moved[:, 0::2].clip(0, size[0])
    moved[:, 1::2] = moved[:, 1::2].clip(0, size[1])
    return cropped, moved


def center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    return crop(image, np.zeros((0, 4)), (width - size) // 2, (height - size) // 2, (size, size))[0]


def object_center_crop(image: Image.Image, boxes: np.ndarray, size: int):
    """A `size x size` crop centred on the first box, moved inside the image where possible."""
    width, height = image.size
    cx, cy = (boxes[0, 0] + boxes[0, 2]) / 2, (boxes[0, 1] + boxes[0, 3]) / 2
    left = int(round(min(max(cx - size / 2, 0), max(width - size, 0))))
    top = int(round(min(max(cy - size / 2, 0), max(height - size, 0))))
    return crop(image, boxes, left, top, (size, size))


def horizontal_flip(image: Image.Image, boxes: np.ndarray, rng: np.random.Generator, p: float = 0.5):
    if rng.random() >= p:
        return image, boxes
    width = image.size[0]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return image.transpose(Image.FLIP_LEFT_RIGHT), flipped


def large_scale_jitter(image: Image.Image, boxes: np.ndarray, output: int, low: float, high: float,
                       rng: np.random.Generator):
    """Scale so the longer side is `output * s`, `s ~ U(low, high)`, then a random `output x output` crop
    (zero padding where the scaled image is smaller: the reference's padding branch was `assert False`)."""
    width, height = image.size
    scale = output * rng.uniform(low, high) / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(size, BICUBIC)
    boxes = boxes * np.array([size[0] / width, size[1] / height] * 2)
    left = int(rng.integers(0, max(size[0] - output, 0) + 1))
    top = int(rng.integers(0, max(size[1] - output, 0) + 1))
    return crop(image, boxes, left, top, (output, output))


def keep_visible(boxes: np.ndarray, *labels):
    """Drop boxes left with no area after cropping (and the matching entries of each `labels` list)."""
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return (boxes[keep], *[[item for item, k in zip(values, keep) if k] for values in labels])
