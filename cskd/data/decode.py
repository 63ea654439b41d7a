"""The one image decoder: every image the pipeline reads (an in-memory folder, a streaming
worker, a tar shard's member) goes through ``decode_image``, so every path sees the same pixels.
The bundle's ``predict.py`` carries a copy of these rules in Pillow alone (it may import nothing
of this project); a test holds the two equal on every mode.

How a file becomes a uint8 ``[C, H, W]`` tensor with C = 1 or 3:
- The header is read first: an image over ``max_pixels`` pixels (``data.max_image_pixels``,
  Pillow's ``MAX_IMAGE_PIXELS`` by default) is refused before anything is decoded.
- EXIF orientation is applied.
- 8-bit modes (1, L, P, LA, RGB, RGBA, CMYK, YCbCr, ...) convert with Pillow's ``convert``: a
  palette is expanded, alpha is dropped (not composited), CMYK and YCbCr follow Pillow's
  formulas, and colour becomes gray by ITU-R 601-2 luma as Pillow computes it.
- 16- and 32-bit integer modes (I;16 and kin, I) are taken as 16-bit: value / 257, rounded,
  clipped to [0, 255]. Float (F) is taken as [0, 1]: value * 255, rounded, clipped.
- Gray becomes colour by repeating the channel.
RGB JPEG, PNG and WebP files without an orientation tag decode through torchvision.io
(libjpeg-turbo, libpng, libwebp): faster, and pixel for pixel what Pillow decodes.
"""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import torch
from PIL import Image, ImageOps

from cskd.errors import DataError

DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
_EXIF_ORIENTATION = 0x0112
_FAST_FORMATS = {"JPEG", "PNG", "WEBP"}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_image(source: str | bytes, *, channels: int, where: str | None = None,
                 max_pixels: int | None = None) -> torch.Tensor:
    """uint8 ``[channels, H, W]`` of the image file at ``source`` (a path) or in ``source`` (its
    bytes). ``where`` names it in errors (default: the path). Anything that cannot be decoded, or
    is over ``max_pixels`` (default ``DEFAULT_MAX_PIXELS``), is a ``DataError`` naming it."""
    where = where or str(source)
    limit = max_pixels or DEFAULT_MAX_PIXELS
    try:
        data = source if isinstance(source, bytes) else _read(source)
        with _own_limit():
            img = Image.open(io.BytesIO(data))
        with img:
            width, height = img.size
            if width * height > limit:
                raise DataError(
                    f"{where}: {width}x{height} is {width * height:,} pixels, over "
                    f"data.max_image_pixels ({limit:,}): a decompression bomb or an image far "
                    "larger than training needs; remove it, or raise data.max_image_pixels"
                )
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            if img.format in _FAST_FORMATS and img.mode == "RGB" and orientation == 1:
                rgb = _torchvision_rgb(data)
                # a 16-bit PNG comes back as uint16: Pillow's path below
                if rgb.dtype == torch.uint8:
                    return _to_channels(rgb, channels)
            return torch.from_numpy(pil_to_array(ImageOps.exif_transpose(img), channels))
    except (OSError, RuntimeError, SyntaxError, ValueError, TypeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = re.sub(r"^.*?\.cpp:\d+, ", "", reason)  # torchvision prefixes the C++ source line
        raise DataError(f"{where}: not a readable image ({reason}); remove or replace it") from None


@contextlib.contextmanager
def _own_limit():
    """Pillow checks sizes against its own global inside ``Image.open`` (a warning above it, an
    error above twice it), without naming the file. For the call its check is off, so the check
    that speaks is ours (just after the header is read, before any pixel is decoded). Decoding
    runs one image at a time per process."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _torchvision_rgb(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode

    return tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def _to_channels(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 ``[3, H, W]`` to ``channels``; gray by Pillow's integer ITU-R 601-2 luma
    (L = (19595 R + 38470 G + 7471 B + 32768) >> 16), so it equals ``convert("L")``."""
    if channels == 3:
        return rgb
    r, g, b = rgb.to(torch.int32)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).to(torch.uint8)[None]


def pil_to_array(img: Image.Image, channels: int) -> np.ndarray:
    """A Pillow image (orientation applied) as uint8 ``[channels, H, W]``, by the rules above."""
    if img.mode in _SIXTEEN_BIT or img.mode.startswith("I;16"):
        values = np.asarray(img, dtype=np.float64) / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    elif img.mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    else:
        # a writable copy
        array = np.array(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        return np.ascontiguousarray(array[None] if channels == 1 else array.transpose(2, 0, 1))
    return np.ascontiguousarray(np.repeat(gray[None], channels, axis=0))
