"""Image decoding and transforms: base64 (standard or URL-safe) of PNG/JPEG/any Pillow format or DICOM.

`decode_image` returns an RGB PIL image or raises `DataError` naming the file, line and column; medical
images need no manual conversion (grayscale, 16-bit and DICOM with windowing become 8-bit RGB).
"""
import base64
import binascii
import io
from typing import Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision import transforms

from .errors import DataError

HALF_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def mean_std(imagenet: bool) -> Tuple[tuple, tuple]:
    """Normalisation statistics: ImageNet's with `--imagenet-default-mean-and-std`, else 0.5/0.5 (-> [-1, 1])."""
    return IMAGENET_MEAN_STD if imagenet else HALF_MEAN_STD


def b64_to_bytes(text: str) -> bytes:
    """Decode standard or URL-safe base64 (padding optional); raise ValueError when it is not base64."""
    text = text.strip()
    text += "=" * (-len(text) % 4)
    translated = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(translated, validate=True)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any numeric image array to 0..255 (min-max; constant images become 0)."""
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError("pixel values are not finite (NaN or infinity)")
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((array - low) / (high - low) * 255.0).astype(np.uint8)


def _dicom_to_image(data: bytes) -> Image.Image:
    try:
        import pydicom
        from pydicom.pixels import apply_voi_lut
    except ImportError as exc:  # pragma: no cover - pydicom is a dependency
        raise ValueError("a DICOM image needs the pydicom package") from exc
    dataset = pydicom.dcmread(io.BytesIO(data))
    pixels = dataset.pixel_array
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[pixels.shape[0] // 2]  # a multi-frame volume: its middle frame
    if pixels.ndim == 2:
        pixels = apply_voi_lut(pixels, dataset)  # the stored window, if any
        if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
            pixels = pixels.max() - pixels
    return Image.fromarray(_to_uint8(pixels))


def bytes_to_image(data: bytes) -> Image.Image:
    """PIL RGB image from encoded bytes (any Pillow format, or DICOM)."""
    if len(data) > 132 and data[128:132] == b"DICM":
        image = _dicom_to_image(data)
    else:
        image = Image.open(io.BytesIO(data))
        image.load()
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            image = Image.fromarray(_to_uint8(np.asarray(image)))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def decode_image(text: str, path: str = "<memory>", line: int = None, column: str = "image") -> Image.Image:
    """Base64 text of an image -> RGB PIL image, or DataError naming file, line and column."""
    if not text or not text.strip():
        raise DataError(path, line, "empty image field", column)
    try:
        data = b64_to_bytes(text)
    except (binascii.Error, ValueError) as exc:
        raise DataError(path, line, f"not valid base64 ({exc})", column) from None
    try:
        return bytes_to_image(data)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(path, line, f"not a readable image ({type(exc).__name__}: {exc})", column) from None
    except Exception as exc:  # pydicom raises many types for malformed files
        raise DataError(path, line, f"not a readable image ({type(exc).__name__}: {exc})", column) from None


def resize_transform(size: int, imagenet: bool = False):
    """The fine-tuning transform: bicubic resize to `size x size` (aspect not kept), tensor, normalise."""
    mean, std = mean_std(imagenet)
    return transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(mean=mean, std=std),
    ])
