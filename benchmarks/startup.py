"""Start-up: how long a fresh `cskd-pipeline --help` and `cskd-pipeline plan -m quickstart` take,
and which imports cost the most (``python -X importtime``'s top entries by cumulative time).

Each command runs ``--repeats`` times in a fresh process; the median wall time is recorded. A
start-up is the time a user waits for the first line of every command, and of every error message.

    python benchmarks/startup.py --out bench/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {"help": ["--help"], "plan": ["plan", "-m", "quickstart"]}


def wall(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def import_times(args: list[str], cwd: Path, top: int) -> list[dict]:
    """``-X importtime`` of the command: the modules with the largest cumulative import time."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline.cli", *args], cwd=cwd, check=True,
                            capture_output=True, text=True)
    rows = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, cumulative, name = _parse(line)
        rows.append({"module": name.strip(), "self_ms": own / 1000, "cumulative_ms": cumulative / 1000,
                     "depth": (len(name) - len(name.lstrip())) // 2})
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:top]


def _parse(line: str) -> tuple[int, int, str]:
    """``import time:   self [us] | cumulative | imported package`` (the name indented by depth)."""
    own, cumulative, name = line.removeprefix("import time:").split("|")
    return int(own), int(cumulative), name.rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/startup.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    result = {"benchmark": "startup", "python": sys.version.split()[0], "cpu_count": os.cpu_count(), "commands": {}}
    with tempfile.TemporaryDirectory() as tmp:  # a fresh working folder: no store, as a first run sees it
        cwd = Path(tmp)
        (cwd / "manifests").symlink_to(REPO / "manifests")
        for name, command in COMMANDS.items():
            wall(command, cwd)  # the first run fills the bytecode cache, as any second use would find it
            times = [wall(command, cwd) for _ in range(args.repeats)]
            result["commands"][name] = {"command": "cskd-pipeline " + " ".join(command),
                                        "median_s": statistics.median(times), "runs_s": times,
                                        "top_imports": import_times(command, cwd, args.top)}
            print(f"{result['commands'][name]['command']}: {statistics.median(times):.2f} s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
