"""The study's statistics on hand-made cells, each figure checked against scipy or a hand count
(the study test runs a real study; this one pins the arithmetic, so a mutant cannot hide in it)."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from pipeline.study_stats import _t_interval, conclusion, summarize


def _rows(scores: dict[str, list[float]], batch: int = 64) -> list[dict]:
    return [{"loss": loss, "batch_size": batch, "seed": seed, "student_top1": value}
            for loss, values in scores.items() for seed, value in enumerate(values)]


def _t95(values: list[float]) -> tuple[float, float]:
    mean, sem = statistics.mean(values), stats.sem(values)
    return stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)


def test_the_summary_is_the_mean_sd_and_t_interval_of_each_method():
    scores = {"kd": [70.0, 71.0, 75.0], "cskd": [71.0, 73.0, 78.0]}
    out = summarize(_rows(scores), reference="kd")
    by_loss = {r["loss"]: r for r in out["summary"]}
    for loss, values in scores.items():
        row = by_loss[loss]
        assert row["mean"] == pytest.approx(statistics.mean(values))  # the mean, not the median (71 for kd)
        assert row["std"] == pytest.approx(statistics.stdev(values))
        assert row["ci95"] == pytest.approx(_t95(values))
        assert row["n"] == 3 and row["seeds"] == [0, 1, 2] and row["scores"] == values


def test_an_interval_is_clipped_to_the_metrics_range():
    low, high = _t_interval([99.0, 100.0], bounds=(0.0, 100.0))
    assert high == 100.0 and low == pytest.approx(_t95([99.0, 100.0])[0])
    low, high = _t_interval([0.0, 1.0], bounds=(0.0, 100.0))
    assert low == 0.0 and high == pytest.approx(_t95([0.0, 1.0])[1])
    assert _t_interval([5.0], bounds=(0.0, 100.0)) is None


def test_paired_differences_wins_losses_ties_and_the_sign_test_on_non_ties():
    # differences by seed: +1, +2, 0, -1, +3 (one tie, one loss)
    scores = {"kd": [90.0, 90.0, 90.0, 90.0, 90.0], "cskd": [91.0, 92.0, 90.0, 89.0, 93.0]}
    (paired,) = summarize(_rows(scores), reference="kd")["paired"]
    diffs = [1.0, 2.0, 0.0, -1.0, 3.0]
    assert paired["diffs"] == pytest.approx(diffs)
    assert (paired["wins"], paired["losses"], paired["ties"]) == (3, 1, 1)
    assert paired["sign_p"] == pytest.approx(stats.binomtest(3, 4).pvalue)  # the 4 non-tied pairs
    assert paired["sign_p"] != pytest.approx(stats.binomtest(3, 5).pvalue)
    assert paired["mean_diff"] == pytest.approx(1.0) and paired["ci95"] == pytest.approx(_t95(diffs))
    assert paired["std_diff"] == pytest.approx(statistics.stdev(diffs))


@pytest.mark.parametrize(("diffs", "excludes"), [
    ([1.0, 1.2, 0.9, 1.1], True),      # all above zero
    ([-1.0, -1.2, -0.9, -1.1], False),  # all below zero: excludes zero on the other side
    ([1.0, -1.0, 0.5, -0.5], False),    # straddles zero
])
def test_excludes_zero_on_either_side(diffs, excludes):
    scores = {"kd": [80.0] * len(diffs), "cskd": [80.0 + d for d in diffs]}
    (paired,) = summarize(_rows(scores), reference="kd")["paired"]
    low, high = _t95(diffs)
    assert paired["excludes_zero"] is bool(low > 0 or high < 0)
    assert paired["excludes_zero"] is (excludes or all(d < 0 for d in diffs))


def test_a_negative_difference_is_a_loss_and_zero_is_a_tie():
    scores = {"kd": [50.0, 50.0, 50.0], "cskd": [49.0, 50.0, 51.0]}
    (paired,) = summarize(_rows(scores), reference="kd")["paired"]
    assert (paired["wins"], paired["losses"], paired["ties"]) == (1, 1, 1)


def test_only_seeds_both_methods_ran_are_paired_and_other_batch_sizes_apart():
    rows = _rows({"kd": [90.0, 91.0, 92.0], "cskd": [91.0, 93.0]}) + _rows({"kd": [80.0, 80.0]}, batch=256)
    out = summarize(rows, reference="kd")
    (paired,) = out["paired"]
    assert paired["seeds"] == [0, 1] and paired["n"] == 2 and paired["diffs"] == pytest.approx([1.0, 2.0])
    assert {(r["loss"], r["batch_size"]) for r in out["summary"]} == {("kd", 64), ("cskd", 64), ("kd", 256)}
    assert summarize(_rows({"kd": [90.0]}), reference="kd")["paired"] == []


def test_one_seed_has_no_interval_and_the_conclusion_says_so():
    (paired,) = summarize(_rows({"kd": [90.0], "cskd": [92.0]}), reference="kd")["paired"]
    assert paired["ci95"] is None and paired["excludes_zero"] is None and paired["std_diff"] is None
    assert "cskd: one seed against kd, no interval" in conclusion([paired])


def test_the_conclusion_states_direction_and_whether_the_data_can_tell():
    up = summarize(_rows({"kd": [80.0] * 5, "cskd": [81.0, 81.2, 80.9, 81.1, 81.05]}), reference="kd")["paired"]
    assert "cskd is 1.05 points above kd" in conclusion(up) and "excludes 0, 5 of 5 seeds ahead, n = 5" in conclusion(up)
    down = summarize(_rows({"kd": [80.0] * 5, "cskd": [79.0, 78.8, 79.1, 78.9, 79.0]}), reference="kd")["paired"]
    assert "points below kd" in conclusion(down)
    mixed = summarize(_rows({"kd": [80.0] * 5, "cskd": [81.0, 79.0, 80.5, 79.5, 80.0]}), reference="kd")["paired"]
    assert "cskd cannot be told from kd with these 5 seeds" in conclusion(mixed)
    assert conclusion([]).startswith("No loss was paired")
    two = mixed + [{**mixed[0], "batch_size": 256}]
    assert "cskd (batch 64)" in conclusion(two) and "cskd (batch 256)" in conclusion(two)
    assert math.isclose(up[0]["mean_diff"], 1.05)


def test_edges_two_seeds_clipping_the_reference_first_and_the_whole_conclusion():
    # the reference's rows come first: the pairing loop must skip it, not stop there
    rows = _rows({"kd": [0.0, 1.0]}) + _rows({"cskd": [99.5, 100.0]}) + _rows({"dist": [1.0, 1.0]})
    out = summarize(rows, reference="kd")
    by_loss = {r["loss"]: r for r in out["summary"]}
    assert by_loss["kd"]["std"] == pytest.approx(statistics.stdev([0.0, 1.0]))  # two seeds have a deviation
    assert by_loss["kd"]["ci95"][0] == 0.0 and by_loss["cskd"]["ci95"][1] == 100.0  # clipped to [0, 100]
    assert by_loss["kd"]["ci95"][1] == pytest.approx(_t95([0.0, 1.0])[1])
    assert by_loss["cskd"]["ci95"][0] == pytest.approx(_t95([99.5, 100.0])[0])
    assert [p["loss"] for p in out["paired"]] == ["cskd", "dist"]
    cskd = out["paired"][0]
    assert cskd["std_diff"] == pytest.approx(statistics.stdev([99.5, 99.0]))
    assert cskd["ci95"][1] == 100.0 and cskd["ci95"][0] == pytest.approx(_t95([99.5, 99.0])[0])
    assert out["conclusion"] == conclusion(out["paired"])
    diffs = summarize(_rows({"kd": [100.0, 99.0]}) + _rows({"cskd": [0.0, 0.5]}), reference="kd")["paired"][0]
    assert diffs["ci95"][0] == -100.0 and diffs["ci95"][1] == pytest.approx(_t95([-100.0, -98.5])[1])


def test_a_narrow_interval_around_zero_and_the_sign_test_edges():
    (near,) = summarize(_rows({"kd": [50.0] * 4, "cskd": [49.5, 50.5, 49.6, 50.4]}), reference="kd")["paired"]
    assert 0 < near["ci95"][1] < 1 and near["excludes_zero"] is False
    (ties,) = summarize(_rows({"kd": [50.0] * 3, "cskd": [50.0] * 3}), reference="kd")["paired"]
    assert ties["sign_p"] is None and ties["ties"] == 3  # no non-tied pair: no test
    (even,) = summarize(_rows({"kd": [50.0, 50.0], "cskd": [51.0, 49.0]}), reference="kd")["paired"]
    assert even["sign_p"] == pytest.approx(1.0)


def test_the_conclusion_sentence_word_for_word():
    up = summarize(_rows({"kd": [80.0] * 5, "cskd": [80.4, 80.6, 80.5, 80.5, 80.4]}), reference="kd")["paired"]
    low, high = up[0]["ci95"]
    assert conclusion(up) == (f"What this data supports: cskd is 0.48 points above kd (interval "
                              f"[{low:+.2f}, {high:+.2f}] excludes 0, 5 of 5 seeds ahead, n = 5).")
    mixed = summarize(_rows({"kd": [80.0] * 5, "cskd": [81.0, 79.0, 80.5, 79.5, 80.0]}) + _rows({"kd": [80.0],
                                                                                                  "dist": [81.0]}),
                      reference="kd")["paired"]
    low, high = mixed[0]["ci95"]
    assert conclusion(mixed) == (f"What this data supports: cskd cannot be told from kd with these 5 seeds (mean "
                                 f"+0.00, interval [{low:+.2f}, {high:+.2f}], 2 of 5 seeds ahead); dist: one seed "
                                 f"against kd, no interval.")


def test_under_five_pairs_the_sentence_gives_the_sign_count_and_claims_no_effect_size():
    """Three pairs whose interval excludes 0 still establish no effect size: the sentence says
    how many seeds were ahead and that the pairs are too few."""
    (three,) = summarize(_rows({"kd": [80.0, 80.0, 80.0], "cskd": [81.6, 81.9, 81.8]}), reference="kd")["paired"]
    assert three["excludes_zero"] is True
    low, high = three["ci95"]
    assert conclusion([three]) == (f"What this data supports: cskd against kd: 3 of 3 seeds ahead, mean +1.77 "
                                   f"(interval [{low:+.2f}, {high:+.2f}]); 3 pairs are fewer than 5, too few to "
                                   f"establish an effect size.")
    assert "points above" not in conclusion([three])


def test_each_contrast_pairs_an_arm_with_its_own_control():
    rows = _rows({"kd": [80.0] * 5, "kd-ce1": [81.0, 81.2, 80.8, 81.1, 80.9],
                  "cskd-core": [81.1, 81.3, 80.6, 81.0, 81.2]})
    out = summarize(rows, reference="kd", contrasts=[("kd-ce1", "kd", "the label weight"),
                                                     ("cskd-core", "kd-ce1", "the cosine loss")])
    label, cosine = out["contrasts"]
    assert (label["loss"], label["reference"], label["isolates"]) == ("kd-ce1", "kd", "the label weight")
    assert label["diffs"] == pytest.approx([1.0, 1.2, 0.8, 1.1, 0.9]) and label["excludes_zero"] is True
    assert label["sentence"].startswith("kd-ce1 is 1.00 points above kd (")
    assert cosine["diffs"] == pytest.approx([0.1, 0.1, -0.2, -0.1, 0.3]) and cosine["reference"] == "kd-ce1"
    assert (cosine["wins"], cosine["losses"], cosine["ties"]) == (3, 2, 0)
    assert cosine["sentence"].startswith("cskd-core cannot be told from kd-ce1 with these 5 seeds (mean +0.04, ")
    assert cosine["sentence"].endswith(", 3 of 5 seeds ahead).")
    assert [p["loss"] for p in out["paired"]] == ["kd-ce1", "cskd-core"]  # the reference pairs stay
    # an arm with fewer seeds is paired on the seeds both have
    short = summarize(rows + _rows({"paper": [82.0, 82.5, 81.5]}), reference="kd",
                      contrasts=[("paper", "cskd-core", "the authors' additions")])["contrasts"]
    assert short[0]["seeds"] == [0, 1, 2] and short[0]["n"] == 3 and "fewer than 5" in short[0]["sentence"]


def test_the_page_and_the_table_show_each_contrast_every_seed_and_the_curves():
    import base64
    import io

    from PIL import Image

    from pipeline.study import markdown
    from pipeline.study_page import plots, render_html

    scores = {"kd": [80.0, 80.0, 80.2, 79.9, 80.1], "kd-ce1": [81.0, 81.2, 80.8, 81.1, 80.9]}
    rows = [{**r, "curve": [70.0, 75.0, r["student_top1"]], "train_wall_s": 10.0, "images_per_s": 100.0,
             "distill_id": "d" * 64} for r in _rows(scores)]
    study = {"study": {"name": "s", "student": "resnet8", "teacher": "resnet20", "data": "digits", "epochs": 3,
                       "losses": {"kd": {}, "kd-ce1": {}}, "batch_sizes": [64], "seeds": [0, 1, 2, 3, 4],
                       "reference": "kd"},
             "teacher_top1": 90.0, "complete": True, "cells": rows, "wall_s": 1.0,
             "environment": {"device": "cpu", "torch": "x"},
             **summarize(rows, reference="kd", contrasts=[("kd-ce1", "kd", "the label weight")])}
    images = plots(study)
    assert set(images) == {"plot", "differences", "curves"} and all(images.values())
    for data in images.values():
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 300
    html = render_html(study)
    (contrast,) = study["contrasts"]
    assert "What each part of the method adds" in html and contrast["sentence"] in html
    assert html.count("data:image/png;base64,") == 3 and "the label weight" in html
    table = markdown(study)
    assert "| kd-ce1 | kd | the label weight | 5 |" in table and contrast["sentence"] in table
    no_curves = {**study, "cells": [{k: v for k, v in c.items() if k != "curve"} for c in rows]}
    assert plots(no_curves)["curves"] is None and render_html(no_curves).count("data:image/png;base64,") == 2
