"""`make mutants`' summary: per protection module, the mutants mutmut killed, the survivors, and
those no selected test reaches (stage wiring that only pipeline-level tests run), from mutmut's
own result files (mutants/**/*.meta). Exit 1 if a module kills under 90% of the mutants its
tests reach, or if a module ``[tool.mutmut] only_mutate`` names was not mutated at all (its
package missing from ``source_paths``: five modules once went unmutated that way, unnoticed).

    python tools/mutants_summary.py [--json mutants/summary.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

STATUS = {0: "survived", 1: "killed", 33: "no_tests", 34: "skipped"}
GOAL = 0.90


def summary(root: Path) -> dict[str, dict]:
    out = {}
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = collections.Counter(STATUS.get(code, "timeout_or_error" if code else "not_run")
                                     for code in codes.values())
        reached = counts["killed"] + counts["survived"] + counts["timeout_or_error"]
        module = meta.relative_to(root).as_posix().removesuffix(".meta")
        out[module] = {"killed": 0, "survived": 0, "no_tests": 0, **counts, "total": len(codes), "killed_of_reached": counts["killed"] / reached if reached else 0.0,
                       "survivors": sorted(k for k, c in codes.items() if c == 0)}
    return out


def unmutated(modules: dict[str, dict], pyproject: Path) -> list[str]:
    """The modules ``only_mutate`` names that have no results."""
    import tomllib

    wanted = tomllib.loads(pyproject.read_text())["tool"]["mutmut"]["only_mutate"]
    return [name for name in wanted if name not in modules]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("mutants"))
    parser.add_argument("--json", type=Path, default=Path("mutants/summary.json"))
    args = parser.parse_args()
    modules = summary(args.root)
    print("| module | mutants | killed | survived | no test reaches | killed of reached |")
    print("|---|---|---|---|---|---|")
    for name, m in modules.items():
        print(f"| {name} | {m['total']} | {m['killed']} | {m['survived']} | {m['no_tests']} | "
              f"{m['killed_of_reached']:.1%} |")
    args.json.write_text(json.dumps(modules, indent=2) + "\n")
    below = [name for name, m in modules.items() if m["killed_of_reached"] < GOAL]
    if below:
        print(f"under {GOAL:.0%}: {', '.join(below)} (survivors: `mutmut results`, one: `mutmut show NAME`)")
    missing = unmutated(modules, Path("pyproject.toml"))
    if missing:
        print(f"not mutated: {', '.join(missing)} (add its package to [tool.mutmut] source_paths)")
    return 1 if below or missing else 0


if __name__ == "__main__":
    sys.exit(main())
