"""cskd.losses against an independent implementation of CSKD.md, golden values and gradients."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cskd import losses
from tests import reference as ref

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "losses.json").read_text())


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _logits(seed: int, b: int, c: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * scale, torch.randn(b, c, generator=g) * scale


CASES = [(0, 8, 10), (1, 64, 100), (2, 3, 4), (3, 17, 7), (4, 2, 2)]


@pytest.mark.parametrize(("seed", "b", "c"), CASES)
def test_cs_loss_matches_reference(seed, b, c):
    zs, zt = _logits(seed, b, c)
    for t in (1.0, 4.0, 6.5):
        got = float(losses.cs_loss(zs, zt, temperature=t))
        assert _rel(got, ref.cs_loss(zs.double().numpy(), zt.double().numpy(), t)) < 1e-4
    temps = losses.cswt_temperatures(zs, zt)
    got = float(losses.cs_loss(zs, zt, temperature=temps, alpha=1.5))
    want = ref.cs_loss(zs.double().numpy(), zt.double().numpy(), temps.double().numpy(), alpha=1.5)
    assert _rel(got, want) < 1e-4


@pytest.mark.parametrize(("seed", "b", "c"), CASES)
def test_cswt_and_kd_match_reference(seed, b, c):
    zs, zt = _logits(seed, b, c)
    got = losses.cswt_temperatures(zs, zt, low=2.0, high=6.0).double().numpy()
    want = ref.cswt(zs.double().numpy(), zt.double().numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert _rel(float(losses.kd_loss(zs, zt, temperature=4.0)), ref.kd_loss(zs.double().numpy(), zt.double().numpy())) < 1e-4


@pytest.mark.parametrize(("seed", "b", "c"), CASES)
def test_baselines_and_correlations_match_reference(seed, b, c):
    zs, zt = _logits(seed, b, c)
    s, t = zs.double().numpy(), zt.double().numpy()
    labels = torch.arange(b) % c
    assert _rel(float(losses.dist_loss(zs, zt, tau=4.0)), ref.dist_loss(s, t)) < 1e-4
    assert _rel(float(losses.dkd_loss(zs, zt, labels)), ref.dkd_loss(s, t, labels.numpy())) < 1e-4
    assert _rel(float(losses.class_correlation_loss(zs, zt, temperature=4.0)), ref.cc_loss(s, t, 4.0)) < 1e-4
    assert _rel(float(losses.batch_correlation_loss(zs, zt, temperature=4.0)), ref.bc_loss(s, t, 4.0)) < 1e-4


@pytest.mark.parametrize("case", ["single", "identical_rows", "identical_student_teacher"])
def test_degenerate_batches_give_mid_temperature_and_finite_losses(case):
    if case == "single":
        zs, zt = _logits(5, 1, 10)
    elif case == "identical_rows":
        row_s, row_t = _logits(6, 1, 10)
        zs, zt = row_s.repeat(8, 1), row_t.repeat(8, 1)
    else:
        zs, _ = _logits(7, 8, 10)
        zt = zs.clone()
    temps = losses.cswt_temperatures(zs, zt, low=2.0, high=6.0)
    assert torch.isfinite(temps).all()
    assert ((temps >= 2.0) & (temps <= 6.0)).all()
    # All similarities equal (up to rounding): every sample gets (low + high) / 2.
    assert torch.allclose(temps, torch.full_like(temps, 4.0))
    loss = losses.cs_loss(zs, zt, temperature=temps)
    assert torch.isfinite(loss)
    want = ref.cs_loss(zs.double().numpy(), zt.double().numpy(), temps.double().numpy())
    assert abs(float(loss) - want) < 1e-4 * max(1.0, abs(want))


def test_cswt_mapping_is_monotone_from_low_to_high():
    zs, zt = _logits(11, 32, 10)
    temps = losses.cswt_temperatures(zs, zt, low=2.0, high=6.0)
    sims = losses.row_cosine(torch.softmax(zs, 1), torch.softmax(zt, 1))
    assert temps[sims.argmax()] == pytest.approx(2.0)  # most similar -> low
    assert temps[sims.argmin()] == pytest.approx(6.0)  # least similar -> high
    order = sims.argsort()
    assert (temps[order].diff() <= 1e-6).all()  # more similar, never hotter
    assert not temps.requires_grad


def test_cswt_carries_no_gradient():
    zs, zt = _logits(12, 8, 5)
    zs.requires_grad_(True)
    temps = losses.cswt_temperatures(zs, zt)
    assert temps.grad_fn is None
    # Gradient of the CSWT loss flows through the softmax only, not through T.
    loss = losses.cs_loss(zs, zt, temperature=temps)
    (grad,) = torch.autograd.grad(loss, zs)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_cs_loss_is_zero_when_student_equals_teacher():
    zs, _ = _logits(13, 16, 10)
    assert float(losses.cs_loss(zs, zs.clone(), temperature=4.0)) == pytest.approx(0.0, abs=1e-5)


def test_cs_loss_depends_on_batch_composition():
    zs, zt = _logits(14, 16, 10)
    whole = float(losses.cs_loss(zs, zt, temperature=4.0))
    halves = [float(losses.cs_loss(zs[i:i + 8], zt[i:i + 8], temperature=4.0)) for i in (0, 8)]
    assert abs(whole - sum(halves) / 2) > 1e-4  # class-wise cosine over the batch: not separable


def test_golden_values():
    x = GOLDEN["inputs"]
    zs, zt = torch.tensor(x["student"]), torch.tensor(x["teacher"])
    zs2, zt2 = torch.tensor(x["student_strong"]), torch.tensor(x["teacher_strong"])
    labels = torch.tensor(x["labels"])
    e = GOLDEN["expected"]
    temps = losses.cswt_temperatures(zs, zt)
    np.testing.assert_allclose(temps.numpy(), e["cswt_temperatures"], rtol=1e-5)
    checks = {
        "cs_loss_T4": losses.cs_loss(zs, zt, temperature=4.0),
        "cs_loss_cswt": losses.cs_loss(zs, zt, temperature=temps),
        "kd_loss_T4": losses.kd_loss(zs, zt, temperature=4.0),
        "dist_loss_tau4": losses.dist_loss(zs, zt, tau=4.0),
        "dkd_loss": losses.dkd_loss(zs, zt, labels),
        "class_correlation_T4": losses.class_correlation_loss(zs, zt, temperature=4.0),
        "batch_correlation_T4": losses.batch_correlation_loss(zs, zt, temperature=4.0),
    }
    for name, value in checks.items():
        assert float(value) == pytest.approx(e[name], rel=1e-4, abs=1e-7), name
    from cskd.objectives import CSKDPaper

    class Fixed(torch.nn.Module):  # a "network" that returns given logits per view
        def __init__(self, weak, strong):
            super().__init__()
            self.weak, self.strong = weak, strong

        def forward(self, images):
            return self.weak if images[0, 0, 0, 0] == 0 else self.strong

    weak_img, strong_img = torch.zeros(6, 1, 2, 2), torch.ones(6, 1, 2, 2)
    objective = CSKDPaper(Fixed(zs, zs2), Fixed(zt, zt2))
    out = objective(weak_img, labels, strong=strong_img)
    for name, value in e["paper_kd_terms"].items():
        assert float(out[name]) == pytest.approx(value, rel=1e-4), name


def test_logit_standardization_option():
    zs, zt = _logits(15, 8, 10)
    plain = losses.kd_loss(zs, zt, temperature=4.0)
    std = losses.kd_loss(zs, zt, temperature=4.0, standardize=True)
    z = losses.standardize_logits(zs)
    assert torch.allclose(z.mean(1), torch.zeros(8), atol=1e-5)
    assert torch.allclose(z.std(1), torch.ones(8), atol=1e-4)
    assert float(std) != pytest.approx(float(plain))
    # Standardization makes KD invariant to shifting and scaling the teacher's logits.
    assert float(losses.kd_loss(zs, zt * 3 + 1, temperature=4.0, standardize=True)) == pytest.approx(float(std), rel=1e-4)


@pytest.mark.parametrize("name", ["cs", "cs_cswt", "kd", "dist", "dkd", "cc", "bc"])
def test_gradients_float64(name):
    g = torch.Generator().manual_seed(21)
    zs = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    zt = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    temps = losses.cswt_temperatures(zs, zt)
    fns = {
        "cs": lambda s: losses.cs_loss(s, zt, temperature=4.0),
        "cs_cswt": lambda s: losses.cs_loss(s, zt, temperature=temps),
        "kd": lambda s: losses.kd_loss(s, zt, temperature=4.0),
        "dist": lambda s: losses.dist_loss(s, zt, tau=4.0),
        "dkd": lambda s: losses.dkd_loss(s, zt, labels),
        "cc": lambda s: losses.class_correlation_loss(s, zt, temperature=4.0),
        "bc": lambda s: losses.batch_correlation_loss(s, zt, temperature=4.0),
    }
    assert torch.autograd.gradcheck(fns[name], (zs,), eps=1e-6, atol=1e-5)


def test_loss_terms_stay_fp32_under_bf16_autocast():
    """precision: bf16 runs the networks in bf16; the loss terms (the correlation matrix
    products especially) must stay the fp32 values, as in the authors' code."""
    from cskd import losses as L

    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(64, 100, generator=g) * 3, torch.randn(64, 100, generator=g) * 3
    t = L.cswt_temperatures(zs, zt)
    terms = {
        "cc": lambda: L.class_correlation_loss(zs, zt, temperature=t),
        "bc": lambda: L.batch_correlation_loss(zs, zt, temperature=4.0),
        "cs": lambda: L.cs_loss(zs, zt, temperature=t),
        "kd": lambda: L.kd_loss(zs, zt, temperature=4.0),
    }
    for name, term in terms.items():
        exact = term()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_bf16 = term()
        assert under_bf16.dtype == torch.float32
        assert torch.allclose(under_bf16, exact, rtol=1e-6, atol=1e-7), name
