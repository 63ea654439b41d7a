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

from cskd.data.enhance_ops import OPS, apply_op, per_sample

# Cutout fill of the authors' strong view, RGB (125, 123, 114).
_CUTOUT_RGB = (125.0, 123.0, 114.0)


def _uniform(b: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(b, generator=gen, device=device)


def random_crop_flip(
    x: torch.Tensor, gen: torch.Generator, *, padding: int, flip: bool
) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to ``H x W`` at a random offset, flip half
    horizontally."""
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


def _random_op(
    x: torch.Tensor, gen: torch.Generator, *, select_all: bool | None = None
) -> torch.Tensor:
    """One RandAugment op per sample, drawn uniformly (with replacement) from ``OPS``.

    Each op is applied once, to the samples that drew it (gather, apply, scatter). Inside a CUDA
    graph capture, where a data-dependent index cannot be taken, every op runs on the whole batch
    and ``torch.where`` picks each sample's (``select_all``): the same draws, the same result."""
    b = x.shape[0]
    dev = x.device
    op = torch.randint(0, len(OPS), (b,), generator=gen, device=dev)
    p = {
        "factor": _uniform(b, 0.05, 0.95, gen, dev),  # Brightness/Color/Contrast/Sharpness
        # The authors: ``int(v)`` of v ~ U(4, 8), so 4 to 7 bits (8 only at v == 8 exactly).
        "bits": torch.randint(4, 8, (b,), generator=gen, device=dev).float(),
        "angle": _uniform(b, -30.0, 30.0, gen, dev),  # degrees
        "shear": _uniform(b, -0.3, 0.3, gen, dev),
        "shift": _uniform(b, -0.3, 0.3, gen, dev),  # fraction of the size
        "threshold": _uniform(b, 0.0, 256.0, gen, dev),
    }
    if select_all is None:
        select_all = dev.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if select_all:
        out = x
        for k, name in enumerate(OPS):
            out = torch.where(per_sample(op == k), apply_op(name, x, p), out)
        return out
    out = x.clone()
    for k, name in enumerate(OPS):
        index = (op == k).nonzero().squeeze(1)
        if index.numel():
            out[index] = apply_op(name, x[index], {key: value[index] for key, value in p.items()})
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


def strong_view(
    x: torch.Tensor,
    gen: torch.Generator,
    *,
    padding: int,
    flip: bool,
    num_ops: int = 2,
    select_all: bool | None = None,
) -> torch.Tensor:
    """The paper preset's strong view: own crop and flip, RandAugment(2 ops), then Cutout.
    ``select_all``: see ``_random_op`` (None: only inside a CUDA graph capture)."""
    x = random_crop_flip(x, gen, padding=padding, flip=flip)
    for _ in range(num_ops):
        x = _random_op(x, gen, select_all=select_all)
    return cutout(x, gen)


# The streamed loader's per-sample views, drawn from a seeded ``random.Random`` per sample (a
# resumed epoch replays them exactly).


def resized_crop_box(
    height: int, width: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
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


def pad_crop_flip(
    image: torch.Tensor, rng: random.Random, *, padding: int, flip: bool
) -> torch.Tensor:
    """The weak view for one ``[C, H, W]`` image: zero-pad, crop back at a random offset, flip
    half."""
    if padding:
        h, w = image.shape[1:]
        dy, dx = rng.randint(0, 2 * padding), rng.randint(0, 2 * padding)
        image = torch.nn.functional.pad(image, (padding,) * 4)[:, dy : dy + h, dx : dx + w]
    if flip and rng.random() < 0.5:
        image = image.flip(-1)
    return image.contiguous()
