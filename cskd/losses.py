"""Distillation losses as pure functions (the formulas of shared CSKD.md).

Shapes: ``student_logits`` and ``teacher_logits`` are ``[B, C]`` (B samples,
C classes). Every function returns a scalar tensor. None of them synchronises
with the host (no ``.item()``, no NumPy, no branching on tensor values), so a
training step built from them can be compiled with ``fullgraph=True`` or
captured as a CUDA graph.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

Temperature = float | torch.Tensor

# The epsilon of the authors' cosine: |u.v| / (||u|| ||v|| + 1e-8).
_COS_EPS = 1e-8


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def in_fp32(loss):
    """Run ``loss`` in float32 with autocast off, as the authors compute every loss term.

    Under ``precision: bf16`` the networks' forward passes run in bf16 autocast, and
    autocast would also run the matrix products of the correlation terms
    (``P^T P``, ``P P^T``) in bf16, moving those terms by several percent."""

    @functools.wraps(loss)
    def wrapped(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *args, **kwargs):
        with torch.autocast(student_logits.device.type, enabled=False):
            return loss(
                _at_least_fp32(student_logits), _at_least_fp32(teacher_logits), *args, **kwargs
            )

    return wrapped


def row_cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``|x[r] . y[r]| / (||x[r]|| ||y[r]|| + 1e-8)`` for every row r: ``[N, D] -> [N]``."""
    dot = (x * y).sum(dim=1).abs()
    return dot / (x.norm(dim=1) * y.norm(dim=1) + _COS_EPS)


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - mean_r row_cosine(x, y)[r]``: the ``dist`` of CSKD.md, scalar."""
    return 1.0 - row_cosine(x, y).mean()


def soften(logits: torch.Tensor, temperature: Temperature) -> torch.Tensor:
    """``softmax(logits / T, dim=1)``; ``T`` is a float or a per-sample tensor ``[B]``."""
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.reshape(-1, 1).to(logits.dtype)
    return F.softmax(logits / temperature, dim=1)


def _t_squared(temperature: Temperature) -> Temperature:
    """The loss scale: ``T^2``, or ``mean(T)^2`` for per-sample temperatures."""
    if isinstance(temperature, torch.Tensor):
        return temperature.mean() ** 2
    return temperature**2


@in_fp32
def cs_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: Temperature,
    alpha: float = 2.0,
) -> torch.Tensor:
    """Class-wise cosine similarity loss over the batch axis.

    ``alpha * T^2 * dist(Ps^T, Pt^T)`` with ``P = softmax_T(z)``: one length-B
    vector per class, cosine per class, averaged over the C classes. A tensor
    ``temperature`` of shape ``[B]`` softens each row with its own T and scales
    by ``mean(T)^2`` (CSWT). The value depends on the batch's composition and size.
    """
    ps = soften(student_logits, temperature)
    pt = soften(teacher_logits, temperature)
    return alpha * _t_squared(temperature) * cosine_distance(ps.t(), pt.t())


@torch.no_grad()
@in_fp32
def cswt_temperatures(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    low: float = 2.0,
    high: float = 6.0,
) -> torch.Tensor:
    """Cosine-similarity-weighted temperature, one per sample: ``[B]``, no gradient.

    ``c_i = cos(softmax(zs[i]), softmax(zt[i]))`` (T = 1, over classes);
    ``T_i = low + (high - low) * (c_max - c_i) / (c_max - c_min)``. The sample on
    which student and teacher agree most gets ``low``, the least ``high``. When
    every ``c_i`` is equal (B = 1, identical rows, student == teacher) the authors'
    code divides by zero; here every sample then gets ``(low + high) / 2``.
    """
    c = row_cosine(
        F.softmax(student_logits.detach(), dim=1), F.softmax(teacher_logits.detach(), dim=1)
    )
    c_max, c_min = c.max(), c.min()
    span = c_max - c_min
    # A span at rounding-noise level (e.g. student == teacher, all c_i = 1 up to a
    # few ulps) is the degenerate case too: stretching noise over [low, high]
    # would give arbitrary temperatures. where() keeps this free of host syncs.
    noise = 16 * torch.finfo(c.dtype).eps
    ratio = torch.where(span > noise, (c_max - c) / span.clamp_min(noise), 0.5)
    return low + (high - low) * ratio.clamp(0.0, 1.0)


@in_fp32
def class_correlation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: Temperature
) -> torch.Tensor:
    """``dist(Gt, Gs)`` with ``G = P^T P`` (``[C, C]``); no alpha, no T^2."""
    ps = soften(student_logits, temperature)
    pt = soften(teacher_logits, temperature)
    return cosine_distance(pt.t() @ pt, ps.t() @ ps)


@in_fp32
def batch_correlation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: Temperature
) -> torch.Tensor:
    """``dist(At, As)`` with ``A = P P^T`` (``[B, B]``); no alpha, no T^2."""
    ps = soften(student_logits, temperature)
    pt = soften(teacher_logits, temperature)
    return cosine_distance(pt @ pt.t(), ps @ ps.t())


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logit standardization: ``(z - mean_c z) / (std_c z + 1e-7)`` per row (unbiased std)."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + 1e-7)


@in_fp32
def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 4.0,
    standardize: bool = False,
) -> torch.Tensor:
    """Hinton KD: ``T^2 * mean_b KL(softmax_T(zt[b]) || softmax_T(zs[b]))``.

    ``standardize=True`` applies logit standardization to both sides first.
    """
    if standardize:
        student_logits = standardize_logits(student_logits)
        teacher_logits = standardize_logits(teacher_logits)
    log_ps = F.log_softmax(student_logits / temperature, dim=1)
    pt = F.softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_ps, pt, reduction="none").sum(dim=1)
    return kl.mean() * temperature**2


@in_fp32
def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Decoupled KD (mdistiller ``dkd_loss``): ``alpha * TCKD + beta * NCKD``.

    TCKD is the KL between the binary (target, rest) distributions; NCKD the KL
    between the non-target distributions. Both scaled by ``T^2``, batch mean.
    ``labels`` is ``[B]`` int64.
    """
    gt = F.one_hot(labels, student_logits.shape[1]).to(student_logits.dtype)
    ps = F.softmax(student_logits / temperature, dim=1)
    pt = F.softmax(teacher_logits / temperature, dim=1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], dim=1)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], dim=1)
    batch = student_logits.shape[0]
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * temperature**2 / batch
    # Subtracting 1000 from the target logit removes it from the softmax.
    log_ps_nt = F.log_softmax(student_logits / temperature - 1000.0 * gt, dim=1)
    pt_nt = F.softmax(teacher_logits / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_ps_nt, pt_nt, reduction="sum") * temperature**2 / batch
    return alpha * tckd + beta * nckd


def _pearson_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - mean_r pearson(x[r], y[r])`` (signed cosine of centred rows, eps 1e-8)."""
    xc = x - x.mean(dim=1, keepdim=True)
    yc = y - y.mean(dim=1, keepdim=True)
    r = (xc * yc).sum(dim=1) / (xc.norm(dim=1) * yc.norm(dim=1) + _COS_EPS)
    return 1.0 - r.mean()


@in_fp32
def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    tau: float = 4.0,
    inter_weight: float = 1.0,
    intra_weight: float = 1.0,
) -> torch.Tensor:
    """DIST: ``tau^2 * [inter * (1 - mean_i pearson(Ys[i,:], Yt[i,:]))
    + intra * (1 - mean_j pearson(Ys[:,j], Yt[:,j]))]`` with ``Y = softmax_tau(z)``."""
    ys = soften(student_logits, tau)
    yt = soften(teacher_logits, tau)
    inter = _pearson_distance(ys, yt)
    intra = _pearson_distance(ys.t(), yt.t())
    return tau**2 * (inter_weight * inter + intra_weight * intra)
