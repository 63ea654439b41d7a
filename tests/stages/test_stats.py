"""Paired statistics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from stagekit.stats import mcnemar, paired_bootstrap, per_class_accuracy, topk


def test_mcnemar_hand_computed():
    # a right & b wrong: 3 samples; a wrong & b right: 1 sample; n = 4, k = 1.
    a = np.array([1, 1, 1, 0, 1, 0], dtype=bool)
    b = np.array([0, 0, 0, 1, 1, 0], dtype=bool)
    r = mcnemar(a, b)
    assert (r["only_a"], r["only_b"]) == (3, 1)
    # P(X <= 1) for Binomial(4, 0.5) = (1 + 4) / 16; two-sided -> 10/16
    assert r["p_value"] == pytest.approx(10 / 16)
    assert mcnemar(a, a)["p_value"] == 1.0


def test_paired_bootstrap_difference_and_interval():
    a = np.array([1] * 90 + [0] * 10, dtype=bool)  # 90%
    b = np.array([1] * 80 + [0] * 20, dtype=bool)  # 80%, wrong on a superset of a's errors
    r = paired_bootstrap(a, b, resamples=4000, seed=1)
    assert r["difference"] == pytest.approx(10.0)
    # diff is 1 on 10 samples, 0 elsewhere: resampled mean ~ Binomial(100, 0.1)/100, sd 3 points.
    assert 3.0 < r["ci_low"] < 6.5 and 13.5 < r["ci_high"] < 17.0
    same = paired_bootstrap(a, a)
    assert same["ci_low"] == same["ci_high"] == 0.0
    assert paired_bootstrap(a, b, seed=1, resamples=4000) == r  # seeded: reproducible


def test_per_class_and_topk():
    labels = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    assert per_class_accuracy(pred, labels, 4) == [50.0, 100.0, 0.0, None]
    logits = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    assert topk(logits, np.array([1, 0]), 1) == 0.0
    assert topk(logits, np.array([1, 0]), 2) == 50.0
    assert topk(logits, np.array([1, 0]), 5) == 100.0


def _log_space_mcnemar(only_a: int, only_b: int) -> float:
    """An independent reference: the two-sided binomial tail summed in log space (lgamma)."""
    import math

    n, k = only_a + only_b, min(only_a, only_b)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, 2.0 * math.exp(top) * sum(math.exp(v - top) for v in logs))


@pytest.mark.parametrize(("only_a", "only_b"), [(6_200, 5_800), (7_000, 5_000), (1_024, 1_000), (25_000, 24_990)])
def test_mcnemar_at_the_size_of_a_real_test_split(only_a, only_b):
    # 50,000 test images (ImageNet's val split); the old sum of comb(n, i) / 2**n overflowed past n = 1,023.
    n_total = 50_000
    a = np.zeros(n_total, dtype=bool)
    b = np.zeros(n_total, dtype=bool)
    a[:only_a] = True
    b[only_a:only_a + only_b] = True
    both = n_total - only_a - only_b
    a[-both // 2:] = b[-both // 2:] = True  # concordant pairs do not enter the test
    r = mcnemar(a, b)
    assert (r["only_a"], r["only_b"]) == (only_a, only_b)
    assert r["p_value"] == pytest.approx(_log_space_mcnemar(only_a, only_b), rel=1e-6, abs=1e-300)


def test_paired_bootstrap_at_50000_images_matches_theory_and_index_resampling():
    rng = np.random.default_rng(0)
    n = 50_000
    a = rng.random(n) < 0.76
    b = np.where(rng.random(n) < 0.9, a, rng.random(n) < 0.75)  # paired: mostly the same answers
    r = paired_bootstrap(a, b, resamples=4000, seed=3)
    diff = a.astype(float) - b.astype(float)
    sd = diff.std() / np.sqrt(n) * 100.0  # the normal approximation of the mean's spread, in points
    assert r["difference"] == pytest.approx(diff.mean() * 100.0)
    assert r["ci_low"] == pytest.approx(r["difference"] - 1.96 * sd, abs=0.1 * sd + 1e-9)
    assert r["ci_high"] == pytest.approx(r["difference"] + 1.96 * sd, abs=0.1 * sd + 1e-9)
    # The estimator it replaces: resample n indices (here 400 resamples to bound memory).
    idx = np.random.default_rng(4).integers(0, n, size=(400, n), dtype=np.int32)
    means = diff[idx].mean(axis=1) * 100.0
    assert np.std(means) == pytest.approx(sd, rel=0.15)


def test_an_image_with_non_finite_logits_counts_as_wrong_and_the_summary_stays_json():
    """50,000 test images, as CIFAR's test split is large; a broken export's NaN or infinite
    logits on some: those images are wrong in top-1 and top-5 (argmax would call a NaN row
    class 0), counted, and left out of the largest logit difference, which stays a number."""
    import json

    from stages.validate import summarize

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 50_000)
    student = rng.normal(size=(50_000, 10)).astype(np.float32)
    student[np.arange(50_000), labels] += 20.0  # right everywhere
    broken = student.copy()
    broken[:1000, 0] = np.nan
    broken[1000:1500, 3] = np.inf
    summary = summarize(broken, labels, teacher=student, student=student, num_classes=10)
    assert summary["nonfinite"] == 1500
    assert summary["top1"] == pytest.approx(100 * 48_500 / 50_000) and summary["top5"] == summary["top1"]
    assert summary["max_logit_diff"] == 0.0
    json.loads(json.dumps(summary, allow_nan=False))
    assert topk(broken, labels, 5, valid=np.isfinite(broken).all(1)) == summary["top5"]
