"""The statistics of a study (``pipeline.study``; its page is ``pipeline.study_page``).

Per loss and batch size: mean, sample standard deviation and a 95% Student-t interval (clipped
to [0, 100]: top-1 is bounded)
of test top-1 over seeds. Per loss against the reference: the paired differences by
seed (same data order, same initialisation), their mean, a 95% t-interval, whether it
excludes 0, and the sign test (wins, losses, ties; two-sided exact binomial p on the
non-tied pairs). scipy computes the t quantiles and the binomial test.
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


def conclusion(paired: list[dict]) -> str:
    """One sentence: what the paired differences support, loss by loss."""
    if not paired:
        return "No loss was paired with the reference, so nothing is compared."
    parts = []
    for r in paired:
        name = f"{r['loss']}" + (f" (batch {r['batch_size']})" if len({p['batch_size'] for p in paired}) > 1 else "")
        if r["ci95"] is None:
            parts.append(f"{name}: one seed, no interval")
        elif r["excludes_zero"]:
            side = "above" if r["mean_diff"] > 0 else "below"
            parts.append(f"{name} is {abs(r['mean_diff']):.2f} points {side} {r['reference']} "
                         f"(interval [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] excludes 0, n = {r['n']})")
        else:
            parts.append(f"{name} cannot be told from {r['reference']} with these {r['n']} seeds "
                         f"(mean {r['mean_diff']:+.2f}, interval [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}])")
    return "What this data supports: " + "; ".join(parts) + "."


def summarize(rows: list[dict], *, reference: str) -> dict:
    """``{"summary": [...], "paired": [...]}`` from the cells' result rows."""
    from scipy import stats

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
        if loss == reference or ref is None:
            continue
        seeds = sorted(set(by_seed) & set(ref))
        diffs = [by_seed[s] - ref[s] for s in seeds]
        if not diffs:
            continue
        wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        ci = _t_interval(diffs, bounds=(-100.0, 100.0))
        paired.append({"loss": loss, "batch_size": batch, "reference": reference, "n": len(diffs), "seeds": seeds,
                       "diffs": diffs, "mean_diff": statistics.mean(diffs),
                       "std_diff": statistics.stdev(diffs) if len(diffs) > 1 else None, "ci95": ci,
                       "excludes_zero": None if ci is None else bool(ci[0] > 0 or ci[1] < 0),
                       "wins": wins, "losses": losses, "ties": len(diffs) - wins - losses,
                       "sign_p": stats.binomtest(wins, wins + losses).pvalue if wins + losses else None})
    return {"summary": summary, "paired": paired, "conclusion": conclusion(paired)}
