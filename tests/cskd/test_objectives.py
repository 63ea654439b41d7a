"""Objectives: the dict contract, the teacher stays frozen, and no host synchronisation
(each objective compiles with ``torch.compile(fullgraph=True)``). The contract and
compile tests run over the loss registry, so a newly registered loss is tested
without editing this file."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cskd import objectives as obj
from cskd.loss_registry import build_objective, registered_losses
from cskd.models import create_model


def _pair():
    torch.manual_seed(0)
    return create_model("resnet8", num_classes=5, in_channels=1), create_model("resnet8", num_classes=5, in_channels=1)


def _batch(b=16):
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, 1, 8, 8, generator=g), torch.randint(0, 5, (b,), generator=g), torch.rand(b, 1, 8, 8, generator=g)


def _registered_variants() -> dict[str, dict]:
    """Every registered loss with its defaults, plus the variants its registration lists."""
    variants = {}
    for kind, entry in sorted(registered_losses().items()):
        for i, example in enumerate(({}, *entry.examples)):
            variants[kind if i == 0 else f"{kind}-{'-'.join(f'{k}={v}' for k, v in example.items())}"] = {
                "kind": kind, **example}
    return variants


VARIANTS = _registered_variants()
BUILDERS = {name: (lambda s, t, data=data: build_objective(registered_losses()[data["kind"]].config
                                                            .model_validate(data), s, t))
            for name, data in VARIANTS.items()}


def test_registry_holds_every_built_in_loss():
    assert {"ce", "kd", "dkd", "dist", "cskd", "cskd-preset=paper", "kd-standardize=True"} <= set(VARIANTS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_objective_contract(name):
    student, teacher = _pair()
    objective = BUILDERS[name](student, teacher).train()
    images, labels, strong = _batch()
    out = objective(images, labels, strong=strong, epoch=torch.tensor(1.0))
    assert {"loss", "output"} <= set(out)
    assert out["output"].shape == (16, 5)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in student.parameters())
    if name != "ce":
        assert not teacher.training
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_core_objective_is_ce_plus_two_cs_terms():
    student, teacher = _pair()
    objective = obj.CSKDCore(student, teacher).eval()
    images, labels, _ = _batch()
    out = objective(images, labels)
    from cskd import losses

    zs, zt = student(images), teacher(images)
    t_i = losses.cswt_temperatures(zs, zt)
    want = F.cross_entropy(zs, labels) + losses.cs_loss(zs, zt, temperature=4.0) + losses.cs_loss(zs, zt, temperature=t_i)
    assert float(out["loss"]) == pytest.approx(float(want), rel=1e-5)


def test_paper_objective_needs_the_strong_view():
    student, teacher = _pair()
    images, labels, _ = _batch()
    with pytest.raises(ValueError, match="strong view"):
        obj.CSKDPaper(student, teacher)(images, labels)


def test_paper_masks_take_the_numpy_median():
    # Even batch: NumPy's percentile(50) interpolates; torch.median would take the lower middle.
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float(obj._median(x)) == pytest.approx(2.5)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_objective_compiles_without_graph_breaks(name):
    """fullgraph=True fails on any .item(), .cpu(), NumPy call or branch on a tensor value."""
    torch._dynamo.reset()
    student, teacher = _pair()
    objective = BUILDERS[name](student, teacher).train()
    images, labels, strong = _batch()
    epoch = torch.tensor(3.0)
    compiled = torch.compile(objective, fullgraph=True, backend="eager")  # dynamo alone finds graph breaks
    out = compiled(images, labels, strong=strong, epoch=epoch)
    objective_eager = objective
    eager = objective_eager(images, labels, strong=strong, epoch=epoch)
    assert float(out["loss"]) == pytest.approx(float(eager["loss"]), rel=1e-4)
