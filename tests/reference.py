"""An independent, loop-based float64 NumPy implementation of the formulas in CSKD.md.

Written from the specification alone (no code shared with ``cskd``), to check the
library against it and to generate the golden fixture.
"""

from __future__ import annotations

import math

import numpy as np


def softmax_rows(z: np.ndarray, temps) -> np.ndarray:
    out = np.empty_like(z, dtype=np.float64)
    for i in range(z.shape[0]):
        t = temps[i] if np.ndim(temps) else temps
        row = z[i] / t
        row = np.exp(row - row.max())
        out[i] = row / row.sum()
    return out


def cos(u: np.ndarray, v: np.ndarray) -> float:
    return abs(float(np.dot(u, v))) / (math.sqrt(float(np.dot(u, u))) * math.sqrt(float(np.dot(v, v))) + 1e-8)


def dist(x: np.ndarray, y: np.ndarray) -> float:
    return 1.0 - sum(cos(x[r], y[r]) for r in range(x.shape[0])) / x.shape[0]


def cs_loss(zs, zt, temps, alpha=2.0) -> float:
    ps, pt = softmax_rows(zs, temps), softmax_rows(zt, temps)
    scale = (float(np.mean(temps)) if np.ndim(temps) else temps) ** 2
    return alpha * scale * dist(ps.T, pt.T)


def cswt(zs, zt, low=2.0, high=6.0) -> np.ndarray:
    ps, pt = softmax_rows(zs, 1.0), softmax_rows(zt, 1.0)
    c = np.array([cos(ps[i], pt[i]) for i in range(zs.shape[0])])
    if c.max() == c.min():
        return np.full(zs.shape[0], (low + high) / 2)
    return low + (high - low) * (c.max() - c) / (c.max() - c.min())


def kd_loss(zs, zt, t=4.0) -> float:
    ps, pt = softmax_rows(zs, t), softmax_rows(zt, t)
    kl = [float(np.sum(pt[i] * (np.log(pt[i]) - np.log(ps[i])))) for i in range(zs.shape[0])]
    return t * t * sum(kl) / len(kl)


def pearson(u, v) -> float:
    uc, vc = u - u.mean(), v - v.mean()
    return float(np.dot(uc, vc)) / (np.linalg.norm(uc) * np.linalg.norm(vc) + 1e-8)


def dist_loss(zs, zt, tau=4.0) -> float:
    ys, yt = softmax_rows(zs, tau), softmax_rows(zt, tau)
    inter = 1 - np.mean([pearson(ys[i], yt[i]) for i in range(ys.shape[0])])
    intra = 1 - np.mean([pearson(ys[:, j], yt[:, j]) for j in range(ys.shape[1])])
    return tau * tau * (inter + intra)


def dkd_loss(zs, zt, labels, alpha=1.0, beta=8.0, t=4.0) -> float:
    ps, pt = softmax_rows(zs, t), softmax_rows(zt, t)
    tckd = nckd = 0.0
    for i, y in enumerate(labels):
        bs = np.array([ps[i, y], 1 - ps[i, y]])
        bt = np.array([pt[i, y], 1 - pt[i, y]])
        tckd += float(np.sum(bt * (np.log(bt) - np.log(bs))))
        mask = np.arange(zs.shape[1]) != y
        qs = softmax_rows(zs[i:i + 1, mask], t)[0]
        qt = softmax_rows(zt[i:i + 1, mask], t)[0]
        nckd += float(np.sum(qt * (np.log(qt) - np.log(qs))))
    n = len(labels)
    return t * t * (alpha * tckd + beta * nckd) / n


def cc_loss(zs, zt, temps) -> float:
    ps, pt = softmax_rows(zs, temps), softmax_rows(zt, temps)
    return dist(pt.T @ pt, ps.T @ ps)


def bc_loss(zs, zt, temps) -> float:
    ps, pt = softmax_rows(zs, temps), softmax_rows(zt, temps)
    return dist(pt @ pt.T, ps @ ps.T)


def paper_kd_terms(zs_w, zt_w, zs_s, zt_s, t=4.0, alpha=2.0, low=2.0, high=6.0) -> dict:
    """The distillation part of the paper objective (CSKD.md section 3), without CE."""
    temps = cswt(zs_w, zt_w, low, high)
    pt = softmax_rows(zt_w, 1.0)
    conf = pt.max(axis=1)
    frac_b = float(np.mean(conf <= np.percentile(conf, 50)))
    mass = pt.sum(axis=0)
    frac_c = float(np.mean(mass <= np.percentile(mass, 50)))
    return {
        "cs_weak": frac_b * (cs_loss(zs_w, zt_w, t, alpha) + cs_loss(zs_w, zt_w, temps, alpha)),
        "cs_strong": cs_loss(zs_s, zt_s, t, alpha) + cs_loss(zs_s, zt_s, temps, alpha),
        "cc_weak": frac_c * (cc_loss(zs_w, zt_w, t) + cc_loss(zs_w, zt_w, temps)),
        "bc_weak": frac_b * (bc_loss(zs_w, zt_w, t) + bc_loss(zs_w, zt_w, temps)),
    }
