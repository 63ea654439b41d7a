"""Paired statistics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from stages.stats import mcnemar, paired_bootstrap, per_class_accuracy, topk


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
