"""The statistics of a study (``pipeline.study``; its page is ``pipeline.study_page``).

Per loss and batch size: mean, sample standard deviation and a 95% Student-t interval (clipped
to [0, 100]: top-1 is bounded)
of test top-1 over seeds. Per loss against the reference: the paired differences by
seed (same data order, same initialisation), their mean, a 95% t-interval, whether it
excludes 0, and the sign test (wins, losses, ties; two-sided exact binomial p on the
non-tied pairs). A named ablation adds contrasts: arm against control, each with what the
difference isolates and one sentence. Sentences are calibrated to the number of pairs: under
five, no effect size is stated as established. scipy computes the t quantiles and the binomial test.
"""

from __future__ import annotations

import math
import statistics


def _t_interval(values: list[float], *, bounds: tuple[float, float]) -> tuple[float, float] | None:
    """The 95% Student-t interval of the mean, clipped to the metric's range (``bounds``): a top-1
    interval past 100% says nothing the clipped one does not, and reads as an error."""
    from scipy import stats

    if len(values) < 2:
        return None
    mean, sd = statistics.mean(values), statistics.stdev(values)
    half = stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
    return (max(bounds[0], mean - half), min(bounds[1], mean + half))


# Below this many pairs an interval rests on an assumption (normal differences) the data cannot
# check, and the sign test cannot reach p < 0.05 (4 of 4 gives 0.125): say so, state no effect size.
MIN_PAIRS = 5


def sentence(r: dict, *, name: str | None = None) -> str:
    """What one paired comparison supports, calibrated to its number of pairs."""
    name = name or r["loss"]
    control, n, ahead = r["reference"], r["n"], f"{r['wins']} of {r['n']} seeds ahead"
    if r["ci95"] is None:
        return f"{name}: one seed against {control}, no interval"
    interval = f"interval [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]"
    if n < MIN_PAIRS:
        return (f"{name} against {control}: {ahead}, mean {r['mean_diff']:+.2f} ({interval}); {n} pairs are fewer "
                f"than {MIN_PAIRS}, too few to establish an effect size")
    if r["excludes_zero"]:
        side = "above" if r["mean_diff"] > 0 else "below"
        return (f"{name} is {abs(r['mean_diff']):.2f} points {side} {control} ({interval} excludes 0, {ahead}, "
                f"n = {n})")
    return (f"{name} cannot be told from {control} with these {n} seeds (mean {r['mean_diff']:+.2f}, {interval}, "
            f"{ahead})")


def conclusion(paired: list[dict]) -> str:
    """One sentence: what the paired differences support, loss by loss."""
    if not paired:
        return "No loss was paired with the reference, so nothing is compared."
    several = len({p["batch_size"] for p in paired}) > 1
    parts = [sentence(r, name=r["loss"] + (f" (batch {r['batch_size']})" if several else "")) for r in paired]
    return "What this data supports: " + "; ".join(parts) + "."


def _pair(by_seed: dict[int, float], ref: dict[int, float]) -> dict | None:
    """The paired statistics of one arm against its control over their common seeds."""
    from scipy import stats

    seeds = sorted(set(by_seed) & set(ref))
    diffs = [by_seed[s] - ref[s] for s in seeds]
    if not diffs:
        return None
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    ci = _t_interval(diffs, bounds=(-100.0, 100.0))
    return {"n": len(diffs), "seeds": seeds, "diffs": diffs, "mean_diff": statistics.mean(diffs),
            "std_diff": statistics.stdev(diffs) if len(diffs) > 1 else None, "ci95": ci,
            "excludes_zero": None if ci is None else bool(ci[0] > 0 or ci[1] < 0),
            "wins": wins, "losses": losses, "ties": len(diffs) - wins - losses,
            "sign_p": stats.binomtest(wins, wins + losses).pvalue if wins + losses else None}


def summarize(rows: list[dict], *, reference: str, contrasts: list[tuple[str, str, str]] = ()) -> dict:
    """``{"summary": [...], "paired": [...], "contrasts": [...]}`` from the cells' result rows.
    ``paired``: every loss against ``reference``; ``contrasts``: (loss, control, what the
    difference isolates) triples, each with its own sentence."""
    groups: dict[tuple[str, int], dict[int, float]] = {}
    for row in rows:
        groups.setdefault((row["loss"], row["batch_size"]), {})[row["seed"]] = row["student_top1"]
    summary = []
    for (loss, batch), by_seed in groups.items():
        scores = [by_seed[s] for s in sorted(by_seed)]
        summary.append({"loss": loss, "batch_size": batch, "n": len(scores), "seeds": sorted(by_seed),
                        "scores": scores, "mean": statistics.mean(scores),
                        "std": statistics.stdev(scores) if len(scores) > 1 else None,
                        "ci95": _t_interval(scores, bounds=(0.0, 100.0))})
    paired = []
    for (loss, batch), by_seed in groups.items():
        ref = groups.get((reference, batch))
        if loss == reference or ref is None or (pair := _pair(by_seed, ref)) is None:
            continue
        paired.append({"loss": loss, "batch_size": batch, "reference": reference, **pair})
    compared = []
    for loss, control, isolates in contrasts:
        for batch in sorted({b for (_, b) in groups}):
            arm, ref = groups.get((loss, batch)), groups.get((control, batch))
            if arm is None or ref is None or (pair := _pair(arm, ref)) is None:
                continue
            row = {"loss": loss, "batch_size": batch, "reference": control, "isolates": isolates, **pair}
            compared.append({**row, "sentence": sentence(row) + "."})
    return {"summary": summary, "paired": paired, "contrasts": compared, "conclusion": conclusion(paired)}
