"""Batched augmentation on the device: the weak view and the paper preset's strong view.

Everything takes a float batch ``[B, C, H, W]`` in [0, 1] and a ``torch.Generator``
on the batch's device, draws its own random numbers per sample, and never
synchronises with the host (per-sample choices are applied with ``torch.where``),
so the same code runs on CPU in tests and inside a CUDA graph on a GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Cutout fill of the authors' strong view, RGB (125, 123, 114).
_CUTOUT_RGB = (125.0, 123.0, 114.0)
# Fill for pixels that geometric ops move in from outside (FixMatch's grey).
_GEOMETRIC_FILL = 128.0 / 255.0


def _uniform(b: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(b, generator=gen, device=device)


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, *, padding: int, flip: bool) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to ``H x W`` at a random offset, flip half horizontally."""
    b, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        do_flip = torch.rand(b, generator=gen, device=x.device) < 0.5
        x = torch.where(do_flip[:, None, None, None], x.flip(3), x)
    return x


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: ``other + factor * (x - other)``, clipped to [0, 1]."""
    return (other + _per_sample(factor) * (x - other)).clamp(0.0, 1.0)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return (0.299 * r + 0.587 * g + 0.114 * b).expand_as(x)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scaled = (x - lo) / (hi - lo).clamp_min(1e-6)
    return torch.where(hi > lo, scaled, x)


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
    lut = torch.div(torch.div(step, 2, rounding_mode="floor") + before, step.clamp_min(1), rounding_mode="floor")
    lut = lut.clamp(0, 255)
    out = lut.gather(1, q).view(b, c, h, w) / 255.0
    return torch.where((step > 0).view(b, c, 1, 1), out, x)


def _sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    blurred = F.conv2d(x, kernel, padding=1, groups=c)
    # PIL leaves the one-pixel border untouched.
    border = torch.ones_like(x, dtype=torch.bool)
    border[:, :, 1:-1, 1:-1] = False
    blurred = torch.where(border, x, blurred)
    return _blend(x, blurred, factor)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour affine warp; ``theta`` ``[B, 2, 3]`` maps output to input coordinates."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)
    return torch.where(inside > 0.5, warped, torch.full_like(warped, _GEOMETRIC_FILL))


_OPS = ("identity", "autocontrast", "brightness", "color", "contrast", "equalize", "posterize",
        "rotate", "sharpness", "shear_x", "shear_y", "solarize", "translate_x", "translate_y")


def _random_op(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One RandAugment op per sample, drawn uniformly (with replacement) from ``_OPS``."""
    b = x.shape[0]
    dev = x.device
    op = torch.randint(0, len(_OPS), (b,), generator=gen, device=dev)
    factor = _uniform(b, 0.05, 0.95, gen, dev)  # Brightness/Color/Contrast/Sharpness
    bits = torch.randint(4, 9, (b,), generator=gen, device=dev).float()
    angle = _uniform(b, -30.0, 30.0, gen, dev) * (math.pi / 180.0)
    shear = _uniform(b, -0.3, 0.3, gen, dev)
    shift = _uniform(b, -0.3, 0.3, gen, dev) * 2.0  # fraction of size -> normalised coords
    threshold = _uniform(b, 0.0, 256.0, gen, dev)

    u8 = (x * 255.0).round()
    gray = _grayscale(x)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)

    def theta(a, bb, c, d, e, f):
        return torch.stack([torch.stack([a, bb, c], 1), torch.stack([d, e, f], 1)], 1)

    cos, sin = torch.cos(angle), torch.sin(angle)
    quantum = torch.pow(2.0, 8.0 - bits)
    results = {
        "identity": x,
        "autocontrast": _autocontrast(x),
        "brightness": _blend(x, torch.zeros_like(x), factor),
        "color": _blend(x, gray, factor),
        "contrast": _blend(x, gray.mean(dim=(1, 2, 3), keepdim=True).expand_as(x), factor),
        "equalize": _equalize(x),
        "posterize": torch.floor(u8 / _per_sample(quantum)) * _per_sample(quantum) / 255.0,
        "rotate": _affine(x, theta(cos, -sin, zero, sin, cos, zero)),
        "sharpness": _sharpness(x, factor),
        "shear_x": _affine(x, theta(one, shear, zero, zero, one, zero)),
        "shear_y": _affine(x, theta(one, zero, zero, shear, one, zero)),
        "solarize": torch.where(u8 >= _per_sample(threshold), 255.0 - u8, u8) / 255.0,
        "translate_x": _affine(x, theta(one, zero, shift, zero, one, zero)),
        "translate_y": _affine(x, theta(one, zero, zero, zero, one, shift)),
    }
    out = x
    for k, name in enumerate(_OPS):
        out = torch.where(_per_sample(op == k), results[name], out)
    return out


def cutout(x: torch.Tensor, gen: torch.Generator, *, max_fraction: float = 0.5) -> torch.Tensor:
    """A square of side ``U(0, max_fraction) * H`` at a uniform centre, clipped, filled grey."""
    b, c, h, w = x.shape
    dev = x.device
    side = _uniform(b, 0.0, max_fraction, gen, dev) * h
    cy = _uniform(b, 0.0, float(h), gen, dev)
    cx = _uniform(b, 0.0, float(w), gen, dev)
    ys = torch.arange(h, device=dev, dtype=x.dtype)[None, :]
    xs = torch.arange(w, device=dev, dtype=x.dtype)[None, :]
    in_y = (ys >= (cy - side / 2).floor()[:, None]) & (ys < (cy + side / 2).floor()[:, None])
    in_x = (xs >= (cx - side / 2).floor()[:, None]) & (xs < (cx + side / 2).floor()[:, None])
    box = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    fill = torch.tensor(_CUTOUT_RGB, device=dev, dtype=x.dtype) / 255.0
    fill = fill.view(1, 3, 1, 1) if c == 3 else fill.mean().view(1, 1, 1, 1).expand(1, c, 1, 1)
    return torch.where(box, fill.expand_as(x), x)


def strong_view(x: torch.Tensor, gen: torch.Generator, *, padding: int, flip: bool, num_ops: int = 2) -> torch.Tensor:
    """The paper preset's strong view: own crop and flip, RandAugment(2 ops), then Cutout."""
    x = random_crop_flip(x, gen, padding=padding, flip=flip)
    for _ in range(num_ops):
        x = _random_op(x, gen)
    return cutout(x, gen)
