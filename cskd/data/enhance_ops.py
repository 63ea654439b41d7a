"""The strong view's image operations on uint8-valued float batches ``[B, C, H, W]``, each matching
what the authors' PIL ops compute (``ImageEnhance``, ``ImageOps``, ``Image.transform``), and the
table of them the strong view draws from (``OPS``; ``apply_op`` runs one with its parameters)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Pixels that rotate, shear and translate move in from outside are black: PIL's
# ``Image.transform`` and ``Image.rotate`` default, which the authors' ops use.
_GEOMETRIC_FILL = 0.0


def per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _blend(u8: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageEnhance`` (``Image.blend(degenerate, image, factor)``) on uint8 values held in
    float32: ``degenerate + factor * (image - degenerate)`` in float32, clipped to [0, 255] and
    truncated, as PIL's C loop does. Returns uint8 values (float)."""
    return (degenerate + per_sample(factor) * (u8 - degenerate)).clamp(0.0, 255.0).floor()


def _gray(u8: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")`` (then back to the image's channels): ITU-R 601-2 luma in PIL's
    integer arithmetic, (19595 R + 38470 G + 7471 B + 32768) >> 16."""
    if u8.shape[1] == 1:
        return u8
    r, g, b = (u8[:, i : i + 1].to(torch.int32) for i in range(3))
    return (
        torch.div(r * 19595 + g * 38470 + b * 7471 + 32768, 65536, rounding_mode="floor")
        .to(u8.dtype)
        .expand_as(u8)
    )


def _contrast_mean(u8: torch.Tensor) -> torch.Tensor:
    """``int(ImageStat.Stat(image.convert("L")).mean[0] + 0.5)`` per sample, ``[B, 1, 1, 1]``."""
    mean = _gray(u8)[:, :1].double().mean(dim=(2, 3), keepdim=True)
    return torch.floor(mean + 0.5).to(u8.dtype)


def _autocontrast(u8: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.autocontrast`` (cutoff 0) per image and channel: the lut
    ``int(ix * scale + offset)`` with ``scale = 255 / (hi - lo)``, ``offset = -lo * scale`` in
    double, clipped; a channel with ``hi <= lo`` is left as it is."""
    lo = u8.amin(dim=(2, 3), keepdim=True).double()
    hi = u8.amax(dim=(2, 3), keepdim=True).double()
    spread = (hi - lo).clamp_min(1.0)
    # a true division: ``255.0 / tensor`` rounds differently
    scale = torch.full_like(spread, 255.0) / spread
    out = (u8.double() * scale + (-lo * scale)).floor().clamp(0.0, 255.0).to(u8.dtype)
    return torch.where(hi > lo, out, u8)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize per image and channel, vectorised."""
    b, c, h, w = x.shape
    q = (x * 255.0).round().long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device, dtype=torch.float32)
    hist.scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    # PIL: step = (count - count of the last non-empty bin) // 255.
    last_nonzero = (torch.arange(256, device=x.device) * (hist > 0)).amax(dim=1, keepdim=True)
    step = torch.div(h * w - hist.gather(1, last_nonzero), 255, rounding_mode="floor")
    before = torch.cumsum(hist, dim=1) - hist
    lut = torch.div(
        torch.div(step, 2, rounding_mode="floor") + before, step.clamp_min(1), rounding_mode="floor"
    )
    lut = lut.clamp(0, 255)
    out = lut.gather(1, q).view(b, c, h, w) / 255.0
    return torch.where((step > 0).view(b, c, 1, 1), out, x)


def _sharpness(u8: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageEnhance.Sharpness``: blended with ``filter(SMOOTH)`` (3x3, weights 1 and a
    centre of 5, over 13, rounded; PIL leaves the one-pixel border unfiltered). The filter is
    computed exactly in integers: round(S / 13) = (2 S + 13) // 26."""
    c = u8.shape[1]
    kernel = torch.ones(3, 3, device=u8.device, dtype=u8.dtype)
    kernel[1, 1] = 5.0
    # integers below 2^24: exact
    total = F.conv2d(u8, kernel.expand(c, 1, 3, 3), padding=1, groups=c)
    smooth = torch.div(2 * total + 13, 26, rounding_mode="floor")
    border = torch.ones_like(u8, dtype=torch.bool)
    border[:, :, 1:-1, 1:-1] = False
    return _blend(u8, torch.where(border, u8, smooth), factor)


def _affine(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.transform(size, AFFINE, (a, b, c, d, e, f))`` with NEAREST, batched.

    ``coeffs`` ``[B, 6]`` map an output pixel to input coordinates in pixels, as PIL
    does: the centre of output pixel (x, y) is (x + 0.5, y + 0.5), it reads input
    pixel (floor(a*x' + b*y' + c), floor(d*x' + e*y' + f)), and anything outside is
    filled with ``_GEOMETRIC_FILL``. So a shear is about the top-left corner, as in
    the authors' ``img.transform(img.size, AFFINE, (1, v, 0, 0, 1, 0))``."""
    b, c, h, w = x.shape
    dev = x.device
    k = coeffs.double() if dev.type == "cpu" else coeffs  # PIL computes in double
    ys = (torch.arange(h, device=dev, dtype=k.dtype) + 0.5).view(1, h, 1)
    xs = (torch.arange(w, device=dev, dtype=k.dtype) + 0.5).view(1, 1, w)
    a, bb, cc, d, e, f = (k[:, i].view(b, 1, 1) for i in range(6))
    src_x = torch.floor(a * xs + bb * ys + cc).long()
    src_y = torch.floor(d * xs + e * ys + f).long()
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    flat = (src_y.clamp(0, h - 1) * w + src_x.clamp(0, w - 1)).view(b, 1, h * w).expand(b, c, h * w)
    moved = x.reshape(b, c, h * w).gather(2, flat).view(b, c, h, w)
    return torch.where(inside[:, None], moved, torch.full_like(moved, _GEOMETRIC_FILL))


def _rotation(angle_deg: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The coefficients ``Image.rotate(angle)`` passes to ``transform``: counter-clockwise
    about the image centre (w/2, h/2), same size."""
    theta = -angle_deg * (math.pi / 180.0)
    a, b = torch.cos(theta), torch.sin(theta)
    d, e = -torch.sin(theta), torch.cos(theta)
    cx, cy = w / 2.0, h / 2.0
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return torch.stack([a, b, c, d, e, f], 1)


OPS = (
    "identity",
    "autocontrast",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "posterize",
    "rotate",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
)


def apply_op(name: str, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """One RandAugment op on a batch, each sample with its own magnitudes ``p`` (``[B]`` each)."""
    if name in (
        "identity",
        "equalize",
        "rotate",
        "shear_x",
        "shear_y",
        "translate_x",
        "translate_y",
    ):
        h, w = x.shape[2], x.shape[3]
        one, zero = torch.ones_like(p["angle"]), torch.zeros_like(p["angle"])
        coeffs = {
            "rotate": lambda: _rotation(p["angle"], h, w),
            "shear_x": lambda: torch.stack([one, p["shear"], zero, zero, one, zero], 1),
            "shear_y": lambda: torch.stack([one, zero, zero, p["shear"], one, zero], 1),
            "translate_x": lambda: torch.stack([one, zero, p["shift"] * w, zero, one, zero], 1),
            "translate_y": lambda: torch.stack([one, zero, zero, zero, one, p["shift"] * h], 1),
        }
        if name == "identity":
            return x
        return _equalize(x) if name == "equalize" else _affine(x, coeffs[name]())
    u8 = (x * 255.0).round()  # every view is on the uint8 grid: PIL's ops work on these values
    factor = p["factor"]
    if name == "autocontrast":
        out = _autocontrast(u8)
    elif name == "brightness":
        out = _blend(u8, torch.zeros_like(u8), factor)
    elif name == "color":
        out = _blend(u8, _gray(u8), factor)
    elif name == "contrast":
        out = _blend(u8, _contrast_mean(u8).expand_as(u8), factor)
    elif name == "sharpness":
        out = _sharpness(u8, factor)
    elif name == "posterize":
        quantum = per_sample(torch.pow(2.0, 8.0 - p["bits"]))
        out = torch.floor(u8 / quantum) * quantum
    else:  # solarize
        out = torch.where(u8 >= per_sample(p["threshold"]), 255.0 - u8, u8)
    return out / 255.0
