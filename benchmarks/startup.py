"""Start-up: how long each command that computes nothing takes in a fresh process (``--help``,
``runs``, ``diff``, ``promote``, ``rollback``, ``bundle verify``, ``gc``, ``schema``, ``validate``,
``plugins``) and ``plan``, whether it imported torch, and which imports cost the most (``python -X
importtime``'s top entries by cumulative time). Issue 35's goals on an idle 2-core machine: 0.5 s
for the light commands, 1.5 s for plan.

The commands run in a fresh folder holding two shipped versions of a small run of the quickstart
(made first, about a minute on 2 cores). Each runs ``--repeats`` times in a fresh process; the
median wall time is recorded, with the CPU's flags. A start-up is the time a user waits for the
first line of every command, and of every error message.

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

SMALL = ["-o", "teacher.model=resnet8", "-o", "teacher.train.epochs=1", "-o", "export.targets=[onnx]",
         "-o", "latency=null", "-o", "gate.max_drop=100", "-o", "gate.min_onnx_agreement=0", "-o", "ship.promote=always"]
COMMANDS = {"help": ["--help"], "runs": ["runs"], "diff": ["diff", "{first}", "{second}"],
            "bundle verify": ["bundle", "verify", "shipped/quickstart/v1"], "promote": ["promote", "quickstart", "v1"],
            "rollback": ["rollback", "quickstart"], "plugins": ["plugins"], "gc": ["gc", "-m", "quickstart"],
            "schema": ["schema"], "validate": ["validate", "-m", "quickstart"], "plan": ["plan", "-m", "quickstart"]}
PROBE = ("import json, sys\nfrom pipeline.cli import main\ntry:\n    main(sys.argv[1:], standalone_mode=False)\n"
         "except BaseException:\n    pass\nprint(json.dumps([m for m in ('torch', 'onnxruntime') if m in sys.modules]))")


def wall(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True)  # errors count too
    return time.perf_counter() - start


def heavy_imports(args: list[str], cwd: Path) -> list[str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def two_versions(cwd: Path) -> tuple[str, str]:
    """Ship the quickstart twice, small (one epoch, then two): the runs the commands read and move."""
    for epochs in (1, 2):
        subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "-m", "quickstart", "-q", *SMALL,
                        "-o", f"student.train.epochs={epochs}"], cwd=cwd, check=True, capture_output=True)
    first, second = sorted(p.name for p in (cwd / "reports" / "quickstart" / "runs").iterdir())
    return first, second


def cpu_flags() -> list[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted({"avx2", "avx512f", "avx512_vnni", "amx_int8"} & set(flags.split(":", 1)[1].split()))


def import_times(args: list[str], cwd: Path, top: int) -> list[dict]:
    """``-X importtime`` of the command: the modules with the largest cumulative import time."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline.cli", *args], cwd=cwd,
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
    result = {"benchmark": "startup", "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
              "cpu_flags": cpu_flags(), "load_average": os.getloadavg()[0], "commands": {}}
    with tempfile.TemporaryDirectory() as tmp:  # a fresh working folder, as a user's project
        cwd = Path(tmp)
        first, second = two_versions(cwd)
        for name, template in COMMANDS.items():
            command = [part.format(first=first, second=second) for part in template]
            wall(command, cwd)  # the first run fills the bytecode cache, as any second use would find it
            times = [wall(command, cwd) for _ in range(args.repeats)]
            result["commands"][name] = {"command": "cskd-pipeline " + " ".join(command),
                                        "median_s": statistics.median(times), "runs_s": times,
                                        "imports": heavy_imports(command, cwd),
                                        "top_imports": import_times(command, cwd, args.top)}
            print(f"{name:<14} {statistics.median(times):5.2f} s  imports {result['commands'][name]['imports']}",
                  flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
