"""Image preprocessing for the TSVs: file -> (optionally cropped / resized) image -> base64 text.

Decoding goes through `biomedgpt.data.image.bytes_to_image`, so DICOM (with its stored window), 16-bit and
grayscale files become 8-bit RGB exactly as the training code would see them.

The reference's pretraining preprocessing (BiomedGPT `mim_sample_chexpert_small.py`, OpenCV) is reproduced
with numpy and Pillow:

* `remove_background`: grayscale, Otsu threshold (OpenCV's algorithm: the first threshold that maximises the
  between-class variance; foreground = pixels *above* it), bounding box of the foreground, crop. An image with
  no foreground is returned unchanged (the reference dropped it with an exception).
* `resize_square`: 256 x 256, bicubic (Pillow's bicubic, which antialiases when shrinking; OpenCV's
  `INTER_CUBIC` does not, so pixels differ slightly from the reference's files).
* `center_crop`: the central 50 % (128 x 128 of a 256 image), the input of VQ-GAN coding for masked image
  modelling.

Fine-tuning datasets keep the original file bytes when they are already an 8-bit PNG or JPEG that decodes
(no lossy re-encoding; the reference re-saved them with Pillow's defaults); anything else (DICOM, 16-bit,
TIFF, ...) is converted to an 8-bit RGB PNG.
"""
import base64
import io
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from ..data.errors import DataError
from ..data.image import _to_uint8, bytes_to_image

PASSTHROUGH_FORMATS = {"JPEG", "PNG"}
PASSTHROUGH_MODES = {"1", "L", "LA", "P", "RGB", "RGBA"}
OUTPUT_FORMATS = ("keep", "png", "jpeg")


@dataclass
class ImageOptions:
    """What to do with each image before it is base64-encoded.

    Args:
        crop_background: remove the dark background (Otsu threshold, bounding box of the foreground).
        size: resize to `size x size` (bicubic; aspect ratio not kept, as the reference).
        center_fraction: then keep only the central fraction of each side (0.5: the MIM middle part).
        format: "keep" (original bytes of 8-bit PNG/JPEG, PNG otherwise), "png" or "jpeg".
        jpeg_quality: quality of JPEG output.
    """

    crop_background: bool = False
    size: Optional[int] = None
    center_fraction: Optional[float] = None
    format: str = "keep"
    jpeg_quality: int = 95

    def __post_init__(self):
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(f"image format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.format!r}")
        if self.size is not None and self.size <= 0:
            raise ValueError(f"image size must be positive, got {self.size}")
        if self.center_fraction is not None and not 0 < self.center_fraction <= 1:
            raise ValueError(f"center fraction must be in (0, 1], got {self.center_fraction}")

    @property
    def transforms(self) -> bool:
        return self.crop_background or self.size is not None or self.center_fraction is not None


# ---------------------------------------------------------------------------------------------- background
def otsu_threshold(gray: np.ndarray) -> int:
    """Otsu's threshold of an 8-bit image, as OpenCV's `THRESH_OTSU` computes it (0 when the image is flat)."""
    hist = np.bincount(np.asarray(gray, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    prob = hist / hist.sum()
    levels = np.arange(256, dtype=np.float64)
    q1 = np.cumsum(prob)
    q2 = 1.0 - q1
    cum_mean = np.cumsum(levels * prob)
    total_mean = cum_mean[-1]
    eps = np.finfo(np.float32).eps
    valid = (np.minimum(q1, q2) >= eps) & (np.maximum(q1, q2) <= 1.0 - eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu1 = cum_mean / q1
        mu2 = (total_mean - cum_mean) / q2
        sigma = q1 * q2 * (mu1 - mu2) ** 2
    sigma = np.where(valid, sigma, 0.0)
    if not np.any(sigma > 0):
        return 0
    return int(np.argmax(sigma))  # the first maximum, as OpenCV's strict `>` update


def foreground_box(image: Image.Image) -> Optional[Tuple[int, int, int, int]]:
    """`(left, upper, right, lower)` (PIL crop box, exclusive ends) of the pixels brighter than Otsu's
    threshold of the grayscale image; None when there are none."""
    gray = np.asarray(image.convert("L"))
    rows, cols = np.nonzero(gray > otsu_threshold(gray))
    if rows.size == 0:
        return None
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def remove_background(image: Image.Image) -> Image.Image:
    """Crop `image` to the bounding box of its foreground (unchanged when no foreground is found)."""
    box = foreground_box(image)
    if box is None or box == (0, 0, image.width, image.height):
        return image
    return image.crop(box)


def resize_square(image: Image.Image, size: int = 256) -> Image.Image:
    return image.resize((size, size), Image.BICUBIC)


def center_crop(image: Image.Image, fraction: float = 0.5) -> Image.Image:
    """The central `fraction` of each side (the reference's MIM crop: 256 -> the middle 128 x 128)."""
    margin = (1.0 - fraction) / 2
    left, upper = round(image.width * margin), round(image.height * margin)
    right, lower = image.width - left, image.height - upper
    return image.crop((left, upper, right, lower))


def apply(image: Image.Image, options: ImageOptions) -> Image.Image:
    """The `options` transforms in the reference's order: background crop, resize, central crop."""
    if options.crop_background:
        image = remove_background(image)
    if options.size is not None:
        image = resize_square(image, options.size)
    if options.center_fraction is not None:
        image = center_crop(image, options.center_fraction)
    return image


# ---------------------------------------------------------------------------------------------- encoding
def image_to_base64(image: Image.Image, fmt: str = "png", jpeg_quality: int = 95) -> str:
    """Standard base64 of `image` encoded as PNG or JPEG (RGB or L kept as they are)."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    else:
        image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def array_to_image(array: np.ndarray) -> Image.Image:
    """An `H x W` or `H x W x C` numpy array -> RGB image; non-8-bit data is min-max scaled to 0..255 as the
    training decoder scales 16-bit images."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        array = _to_uint8(array)
    return Image.fromarray(array).convert("RGB")


def _passthrough(data: bytes) -> bool:
    """Whether the file bytes can go into the TSV unchanged (an 8-bit PNG or JPEG)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return probe.format in PASSTHROUGH_FORMATS and probe.mode in PASSTHROUGH_MODES
    except Exception:  # DICOM and friends: Pillow cannot even identify them
        return False


def load_image_file(path: str) -> Tuple[bytes, Image.Image]:
    """`(file bytes, decoded RGB image)`; DataError naming the file when it is missing or unreadable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DataError(path, None, "image file not found", "image") from None
    except OSError as exc:
        raise DataError(path, None, f"cannot read the image file ({exc.strerror or exc})", "image") from None
    if not data:
        raise DataError(path, None, "empty image file", "image")
    try:
        image = bytes_to_image(data)
    except Exception as exc:  # Pillow and pydicom raise many types for damaged files
        raise DataError(path, None, f"not a readable image ({type(exc).__name__}: {exc})", "image") from None
    return data, image


def encode_image_file(path: str, options: Optional[ImageOptions] = None) -> str:
    """Base64 text of the image file at `path` after `options`; DataError naming the file if it is bad."""
    options = options or ImageOptions()
    data, image = load_image_file(os.fspath(path))
    if options.format == "keep" and not options.transforms and _passthrough(data):
        return base64.b64encode(data).decode("ascii")
    try:
        image = apply(image, options)
    except Exception as exc:
        raise DataError(path, None, f"image processing failed ({type(exc).__name__}: {exc})", "image") from None
    return image_to_base64(image, "jpeg" if options.format == "jpeg" else "png", options.jpeg_quality)


def encode_image(image: Image.Image, options: Optional[ImageOptions] = None) -> str:
    """Base64 text of an in-memory image after `options` ("keep" means PNG here)."""
    options = options or ImageOptions()
    return image_to_base64(apply(image, options), "jpeg" if options.format == "jpeg" else "png",
                           options.jpeg_quality)
