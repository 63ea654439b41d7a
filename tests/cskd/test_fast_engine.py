"""The fast engine computes what the classic engine computes: same losses, same updates."""

from __future__ import annotations

import pytest
import torch

from cskd.data.augment import strong_view
from cskd.fast_engine import FastStep
from cskd.models import create_model
from cskd.objectives import CrossEntropy, CSKDCore, CSKDPaper


def _setup(objective_cls, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    student = create_model("resnet8", num_classes=10, in_channels=1).to(dtype)
    teacher = create_model("resnet14", num_classes=10, in_channels=1).to(dtype)
    obj = objective_cls(student) if objective_cls is CrossEntropy else objective_cls(student, teacher)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    return obj.train(), opt


def _batches(n=3, b=16):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = torch.rand(b, 1, 8, 8, generator=g)
        out.append((x, torch.randint(0, 10, (b,), generator=g), strong_view(x, g, padding=1, flip=False)))
    return out


@pytest.mark.parametrize("objective_cls", [CrossEntropy, CSKDCore, CSKDPaper])
def test_fast_step_matches_classic_step(objective_cls):
    # In float64, so that the two steps' different summation orders (foreach against SGD.step) stay
    # far below the tolerance on every CPU's kernels (about 1e-16 here): in float32 they reached
    # 1.6e-6 on an AMD EPYC with torch's AVX2 kernels, over the test's 1e-6, which a weight decay
    # applied wrongly (5e-4 * lr * w per step) barely crosses.
    classic, classic_opt = _setup(objective_cls, dtype=torch.float64)
    fast, fast_opt = _setup(objective_cls, dtype=torch.float64)
    step = FastStep(fast, fast_opt, device=torch.device("cpu"), bf16=False)
    for i, (x, y, s) in enumerate((x.double(), y, s.double()) for x, y, s in _batches()):
        # a changing schedule; the fast step reads lr from a float32 tensor, so the classic step
        # gets the same float32 value (else they differ by its rounding, 1.5e-8 of each update)
        lr = float(torch.tensor(0.05 * 0.5**i, dtype=torch.float32))
        for group in classic_opt.param_groups:
            group["lr"] = lr
        out = classic(x, y, strong=s, epoch=torch.tensor(1.0))
        classic_opt.zero_grad()
        out["loss"].backward()
        grads = [p.grad.clone() for p in classic.student.parameters()]
        classic_opt.step()
        fast_out = step(x, y, s, lr=lr, epoch=1)
        # the step returns its terms in float32, whatever the training dtype
        assert float(fast_out["loss"]) == pytest.approx(float(out["loss"]), rel=1e-6)
        assert set(fast_out) == {k for k in out if k != "output"}
        assert any(g.abs().sum() > 0 for g in grads)
        for (name, a), b in zip(classic.student.state_dict().items(), fast.student.state_dict().values(), strict=True):
            assert torch.allclose(a.double(), b.double(), rtol=1e-9, atol=1e-12), (i, name)
    # the momentum buffers live where torch.optim.SGD keeps them, so checkpoints are shared
    for p_c, p_f in zip(classic.student.parameters(), fast.student.parameters(), strict=True):
        assert torch.allclose(classic_opt.state[p_c]["momentum_buffer"], fast_opt.state[p_f]["momentum_buffer"],
                              rtol=1e-9, atol=1e-12)


def test_engine_selects_fast_step_and_trains(tmp_path):
    from cskd.config import TrainConfig
    from cskd.data import load_dataset, split_train_val
    from cskd.engine import train
    from cskd.models import Preprocessed

    ds = load_dataset("digits")
    tr, va = split_train_val(ds.train, val_fraction=0.1, seed=0)
    results = {}
    for engine in ("classic", "fast"):
        torch.manual_seed(0)
        model = Preprocessed(create_model("resnet8", num_classes=10, in_channels=1), mean=ds.mean, std=ds.std)
        cfg = TrainConfig(epochs=2, batch_size=128, engine=engine, augment={"crop_padding": 1, "flip": False})
        results[engine] = train(CrossEntropy(model), tr, va, cfg, work_dir=tmp_path / engine,
                                metrics_path=tmp_path / f"{engine}.jsonl", progress=False)
    # rounding of lr * update (see above) drifts slowly over 20 steps; the step test pins exactness
    assert results["fast"]["ce"] == pytest.approx(results["classic"]["ce"], rel=2e-3)
    assert results["fast"]["val_top1"] == pytest.approx(results["classic"]["val_top1"], abs=1.0)


@pytest.mark.gpu
def test_fast_step_on_gpu_captures_and_matches():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (the graph capture path)")
    classic, classic_opt = _setup(CSKDCore)
    fast, fast_opt = _setup(CSKDCore)
    classic.cuda()
    fast.cuda()
    for p in list(classic.student.parameters()):
        classic_opt.state.pop(p, None)
    step = FastStep(fast, fast_opt, device=torch.device("cuda"), bf16=False)
    assert step.use_graph
    for x, y, s in _batches():
        x, y, s = x.cuda(), y.cuda(), s.cuda()
        out = classic(x, y, strong=s, epoch=torch.tensor(1.0, device="cuda"))
        classic_opt.zero_grad()
        out["loss"].backward()
        classic_opt.step()
        fast_out = step(x, y, s, lr=0.05, epoch=1)
        assert float(fast_out["loss"]) == pytest.approx(float(out["loss"]), rel=1e-4)
    for a, b in zip(classic.student.parameters(), fast.student.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
