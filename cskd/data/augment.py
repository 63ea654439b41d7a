"""Batched augmentation on the device: the weak view and the paper preset's strong view.

Everything takes a float batch ``[B, C, H, W]`` in [0, 1] and a ``torch.Generator``
on the batch's device and draws its own random numbers per sample. The weak view and
Cutout never synchronise with the host; the strong view's per-sample op choice
gathers each op's samples (one index per op), except inside a CUDA graph capture,
where every op runs on the whole batch and ``torch.where`` picks (same draws, same
result).
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

# Cutout fill of the authors' strong view, RGB (125, 123, 114).
_CUTOUT_RGB = (125.0, 123.0, 114.0)
# Pixels that rotate, shear and translate move in from outside are black: PIL's
# ``Image.transform`` and ``Image.rotate`` default, which the authors' ops use.
_GEOMETRIC_FILL = 0.0


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


def _blend(u8: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageEnhance`` (``Image.blend(degenerate, image, factor)``) on uint8 values held in
    float32: ``degenerate + factor * (image - degenerate)`` in float32, clipped to [0, 255] and
    truncated, as PIL's C loop does. Returns uint8 values (float)."""
    return (degenerate + _per_sample(factor) * (u8 - degenerate)).clamp(0.0, 255.0).floor()


def _gray(u8: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")`` (then back to the image's channels): ITU-R 601-2 luma in PIL's
    integer arithmetic, (19595 R + 38470 G + 7471 B + 32768) >> 16."""
    if u8.shape[1] == 1:
        return u8
    r, g, b = (u8[:, i:i + 1].to(torch.int32) for i in range(3))
    return torch.div(r * 19595 + g * 38470 + b * 7471 + 32768, 65536, rounding_mode="floor").to(u8.dtype).expand_as(u8)


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
    scale = torch.full_like(spread, 255.0) / spread  # a true division: ``255.0 / tensor`` rounds differently
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
    lut = torch.div(torch.div(step, 2, rounding_mode="floor") + before, step.clamp_min(1), rounding_mode="floor")
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
    total = F.conv2d(u8, kernel.expand(c, 1, 3, 3), padding=1, groups=c)  # integers below 2^24: exact
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


_OPS = ("identity", "autocontrast", "brightness", "color", "contrast", "equalize", "posterize",
        "rotate", "sharpness", "shear_x", "shear_y", "solarize", "translate_x", "translate_y")


def _apply(name: str, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """One RandAugment op on a batch, each sample with its own magnitudes ``p`` (``[B]`` each)."""
    if name in ("identity", "equalize", "rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        h, w = x.shape[2], x.shape[3]
        one, zero = torch.ones_like(p["angle"]), torch.zeros_like(p["angle"])
        coeffs = {"rotate": lambda: _rotation(p["angle"], h, w),
                  "shear_x": lambda: torch.stack([one, p["shear"], zero, zero, one, zero], 1),
                  "shear_y": lambda: torch.stack([one, zero, zero, p["shear"], one, zero], 1),
                  "translate_x": lambda: torch.stack([one, zero, p["shift"] * w, zero, one, zero], 1),
                  "translate_y": lambda: torch.stack([one, zero, zero, zero, one, p["shift"] * h], 1)}
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
        quantum = _per_sample(torch.pow(2.0, 8.0 - p["bits"]))
        out = torch.floor(u8 / quantum) * quantum
    else:  # solarize
        out = torch.where(u8 >= _per_sample(p["threshold"]), 255.0 - u8, u8)
    return out / 255.0


def _random_op(x: torch.Tensor, gen: torch.Generator, *, select_all: bool | None = None) -> torch.Tensor:
    """One RandAugment op per sample, drawn uniformly (with replacement) from ``_OPS``.

    Each op is applied once, to the samples that drew it (gather, apply, scatter). Inside a CUDA
    graph capture, where a data-dependent index cannot be taken, every op runs on the whole batch
    and ``torch.where`` picks each sample's (``select_all``): the same draws, the same result."""
    b = x.shape[0]
    dev = x.device
    op = torch.randint(0, len(_OPS), (b,), generator=gen, device=dev)
    p = {"factor": _uniform(b, 0.05, 0.95, gen, dev),  # Brightness/Color/Contrast/Sharpness
         # The authors: ``int(v)`` of v ~ U(4, 8), so 4 to 7 bits (8 only at v == 8 exactly).
         "bits": torch.randint(4, 8, (b,), generator=gen, device=dev).float(),
         "angle": _uniform(b, -30.0, 30.0, gen, dev),  # degrees
         "shear": _uniform(b, -0.3, 0.3, gen, dev),
         "shift": _uniform(b, -0.3, 0.3, gen, dev),  # fraction of the size
         "threshold": _uniform(b, 0.0, 256.0, gen, dev)}
    if select_all is None:
        select_all = dev.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if select_all:
        out = x
        for k, name in enumerate(_OPS):
            out = torch.where(_per_sample(op == k), _apply(name, x, p), out)
        return out
    out = x.clone()
    for k, name in enumerate(_OPS):
        index = (op == k).nonzero().squeeze(1)
        if index.numel():
            out[index] = _apply(name, x[index], {key: value[index] for key, value in p.items()})
    return out


def cutout(x: torch.Tensor, gen: torch.Generator, *, max_fraction: float = 0.5) -> torch.Tensor:
    """The authors' ``Cutout``/``CutoutAbs``: side ``v = U(0, max_fraction) * W``, a corner at
    ``int(max(0, U(1, W) - v/2))`` (so a box near the top or left edge keeps its size),
    the far corner ``min(W, corner + v)``, drawn by PIL's ``rectangle``, which fills
    both corners inclusive at integer (truncated) coordinates. Filled RGB (125, 123, 114);
    one-channel images get that colour's mean."""
    b, c, h, w = x.shape
    dev = x.device
    side = _uniform(b, 0.0, max_fraction, gen, dev) * w
    # the authors' ``np.random.uniform(w)``: low w, high 1.0, so U(1, w) (numpy allows low > high)
    cx = _uniform(b, 1.0, float(w), gen, dev)
    cy = _uniform(b, 1.0, float(h), gen, dev)
    x0 = (cx - side / 2).clamp_min(0).floor()
    y0 = (cy - side / 2).clamp_min(0).floor()
    x1 = torch.minimum(x0 + side, torch.full_like(x0, float(w))).floor()
    y1 = torch.minimum(y0 + side, torch.full_like(y0, float(h))).floor()
    ys = torch.arange(h, device=dev, dtype=x.dtype)[None, :]
    xs = torch.arange(w, device=dev, dtype=x.dtype)[None, :]
    in_y = (ys >= y0[:, None]) & (ys <= y1[:, None])
    in_x = (xs >= x0[:, None]) & (xs <= x1[:, None])
    box = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    fill = torch.tensor(_CUTOUT_RGB, device=dev, dtype=x.dtype) / 255.0
    fill = fill.view(1, 3, 1, 1) if c == 3 else fill.mean().view(1, 1, 1, 1).expand(1, c, 1, 1)
    return torch.where(box, fill.expand_as(x), x)


def strong_view(x: torch.Tensor, gen: torch.Generator, *, padding: int, flip: bool, num_ops: int = 2,
                select_all: bool | None = None) -> torch.Tensor:
    """The paper preset's strong view: own crop and flip, RandAugment(2 ops), then Cutout.
    ``select_all``: see ``_random_op`` (None: only inside a CUDA graph capture)."""
    x = random_crop_flip(x, gen, padding=padding, flip=flip)
    for _ in range(num_ops):
        x = _random_op(x, gen, select_all=select_all)
    return cutout(x, gen)


# The streamed loader's per-sample views, drawn from a seeded ``random.Random`` per sample (a
# resumed epoch replays them exactly).

def resized_crop_box(height: int, width: int, rng: random.Random, scale=(0.08, 1.0),
                      ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """``v2.RandomResizedCrop``'s box (its ``make_params``, line for line) drawn from ``rng``: the
    transform draws from torch's global generator, and saving and restoring that around every
    sample costs more than decoding it."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height  # fallback: the central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def pad_crop_flip(image: torch.Tensor, rng: random.Random, *, padding: int, flip: bool) -> torch.Tensor:
    """The weak view for one ``[C, H, W]`` image: zero-pad, crop back at a random offset, flip half."""
    if padding:
        h, w = image.shape[1:]
        dy, dx = rng.randint(0, 2 * padding), rng.randint(0, 2 * padding)
        image = torch.nn.functional.pad(image, (padding,) * 4)[:, dy:dy + h, dx:dx + w]
    if flip and rng.random() < 0.5:
        image = image.flip(-1)
    return image.contiguous()
