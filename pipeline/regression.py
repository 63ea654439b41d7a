"""The CI regression gate: compare a run's report.json with a committed baseline.

A baseline names metrics by their dotted path in report.json, with the expected
value, a tolerance (absolute points or relative fraction) and which direction is
better. Any metric worse than its tolerance allows is a regression.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from cskd.config import Strict
from foundation.errors import ManifestError


class BaselineMetric(Strict):
    # Finite and bounded: NaN compares false with everything, and an infinite tolerance passes anything.
    value: float = Field(allow_inf_nan=False, ge=-1e9, le=1e9)
    tolerance: float = Field(ge=0, le=1e6, allow_inf_nan=False)
    mode: Literal["absolute", "relative"] = "absolute"
    direction: Literal["higher", "lower"] = Field("higher", description="which direction is better")

    @model_validator(mode="after")
    def _sane_relative(self) -> BaselineMetric:
        if self.mode == "relative" and self.tolerance > 1.0:
            raise ValueError(f"a relative tolerance is a fraction of the value; {self.tolerance} is over 1 (100%)")
        return self

    def allowed(self) -> float:
        """The worst value that still passes."""
        slack = self.tolerance * abs(self.value) if self.mode == "relative" else self.tolerance
        return self.value - slack if self.direction == "higher" else self.value + slack

    def passes(self, current: float) -> bool:
        return current >= self.allowed() if self.direction == "higher" else current <= self.allowed()


class Baseline(Strict):
    metrics: dict[str, BaselineMetric] = Field(min_length=1)


MAX_JSON_BYTES = 64 << 20


def load_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; every way it can be wrong is a ``ManifestError`` (exit 2)."""
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder; give the {what} file")
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ManifestError(f"{path}: {what} is over {MAX_JSON_BYTES >> 20} MiB; that is not a {what}")
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    except RecursionError:
        raise ManifestError(f"{path}: {what} is nested too deeply to be a {what}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: {what} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: {what} must be a JSON object, found {type(data).__name__}")
    return data


def load_baseline(path: Path) -> Baseline:
    try:
        return Baseline.model_validate(load_json(path, "baseline"))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ManifestError(f"{path}: {where}: {err['msg']}") from None


def lookup(report: dict, dotted: str, report_path: Path) -> float:
    node: object = report
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ManifestError(f"{report_path}: no metric {dotted!r} in the report (fix the baseline's key)")
        node = node[part]
    if not isinstance(node, (int, float)) or isinstance(node, bool) or node != node or abs(node) == float("inf"):
        raise ManifestError(f"{report_path}: {dotted!r} is not a finite number ({node!r})")
    return float(node)


def compare(baseline: Baseline, report: dict, report_path: Path) -> list[dict]:
    rows = []
    for name, expected in baseline.metrics.items():
        current = lookup(report, name, report_path)
        rows.append({"metric": name, "baseline": expected.value, "current": current, "allowed": expected.allowed(),
                     "direction": expected.direction, "passed": expected.passes(current)})
    return rows


def markdown(rows: list[dict], *, report_path: Path, baseline_path: Path) -> str:
    failed = [r for r in rows if not r["passed"]]
    title = (f"### cskd-pipeline regression gate: {'FAIL' if failed else 'PASS'}"
             f" ({len(failed)} of {len(rows)} metrics regressed)")
    lines = [title, "", f"Report `{report_path}` against baseline `{baseline_path}`.", "",
             "| metric | baseline | current | allowed | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        bound = ">=" if r["direction"] == "higher" else "<="
        lines.append(f"| `{r['metric']}` | {r['baseline']:.4g} | {r['current']:.4g} | {bound} {r['allowed']:.4g} | "
                     f"{'pass' if r['passed'] else '**REGRESSION**'} |")
    return "\n".join(lines)
