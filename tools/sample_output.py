"""The sample output in the documentation, made from a real run and checked against a fresh one.

    python tools/sample_output.py write     # run the quickstart in a fresh folder, write docs/samples/
    python tools/sample_output.py check     # run it again and compare with what docs/samples/ holds

The sample keeps the first epoch line of each training stage and folds the rest into one
``...`` line. A comparison masks what varies from run to run (timings, images/s, the run id)
and compares everything else: every stage's line, its artifact id, its figures. Training on
a CPU is deterministic on one kind of CPU; on the other kind (VNNI against AVX2, exports/cpu.py)
the INT8 stage and everything after it differ by design (another id, 7-bit weights), and the
float kernels may round a figure differently, so there only the line shapes and the ids up to
the INT8 stage are compared.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "docs" / "samples"
SAMPLE = SAMPLES / "quickstart-run.txt"
COMMAND = ["cskd-pipeline", "run", "-m", "quickstart"]

_EPOCH = re.compile(r"^\[(\w+) *\] \S+ epoch (\d+)/\d+")
_VARYING = [
    (re.compile(r"\s+\d+\.\ds\b"), " <s>"),                                 # stage time (its padding too)
    (re.compile(r"\b\d+ KiB\b"), "<KiB>"),                                   # file sizes vary by metadata bytes
    (re.compile(r"\b\d+ img/s\b"), "<img/s>"),                              # throughput
    (re.compile(r"(fastest at batch \d+:) \S+"), r"\1 <backend>"),            # which back-end wins a timing
    (re.compile(r"ETA \d+:\d\d(:\d\d)?"), "ETA <t>"),
    (re.compile(r"\d{8}T\d{6}(\.\d{3})?Z-[0-9a-f]{6}"), "<run>"),             # run id (milliseconds since 2026-12)
]
_NUMBER = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")
_ID = re.compile(r"\b[0-9a-f]{12}\b")


def condense(lines: list[str]) -> list[str]:
    """The first epoch line of each training stage, then one '...' line for the rest."""
    out: list[str] = []
    for line in lines:
        match = _EPOCH.match(line)
        if match and match.group(2) != "1":
            if out and out[-1] != "...":
                out.append("...")
            continue
        out.append(line)
    return out


def mask(line: str, *, numbers: bool) -> str:
    for pattern, token in _VARYING:
        line = pattern.sub(token, line)
    if numbers:
        ids = _ID.findall(line)
        line = _NUMBER.sub("<n>", _ID.sub("<id>", line))
        line += "  " + " ".join(ids)   # ids are still compared where asked
    return line


def differences(expected: list[str], actual: list[str], *, same_cpu: bool) -> list[str]:
    """Lines that differ after masking: empty when the sample matches the run."""
    if len(expected) != len(actual):
        return [f"{len(expected)} lines in the sample, {len(actual)} in the run"]
    problems = []
    after_int8 = False
    for want, got in zip(expected, actual, strict=True):
        after_int8 = after_int8 or want.startswith("[quantize]")
        if same_cpu:
            want_m, got_m = mask(want, numbers=False), mask(got, numbers=False)
        else:
            want_m, got_m = mask(want, numbers=True), mask(got, numbers=True)
            if after_int8:     # another CPU class: another INT8 model, other ids from here on
                want_m, got_m = _ID.sub("<id>", want_m), _ID.sub("<id>", got_m)
        if want_m != got_m:
            problems.append(f"sample: {want}\n   run: {got}")
    return problems


def same_cpu(meta: dict) -> bool:
    """Whether this machine's CPU is the one the sample was written on (its class and model): only
    then are its accuracies expected to the digit; elsewhere numbers are masked and ids compared."""
    from exports.cpu import cpu_model, machine_class

    return meta.get("cpu_class") == machine_class() and meta.get("cpu_model") == cpu_model()


def run_quickstart(folder: Path) -> list[str]:
    """Run the quickstart in an empty folder as a user would; its output, condensed."""
    shutil.copy(ROOT / "manifests" / "quickstart.yaml", folder / "quickstart.yaml")
    binary = Path(sys.executable).parent / COMMAND[0]
    result = subprocess.run([str(binary), *COMMAND[1:]], cwd=folder, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"the quickstart exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return condense(result.stdout.splitlines())


def main(action: str) -> int:
    sys.path.insert(0, str(ROOT))
    from exports.cpu import cpu_model, machine_class

    with tempfile.TemporaryDirectory() as folder:
        lines = run_quickstart(Path(folder))
    if action == "write":
        SAMPLES.mkdir(parents=True, exist_ok=True)
        SAMPLE.write_text("\n".join(lines) + "\n")
        SAMPLE.with_suffix(".json").write_text(json.dumps(
            {"command": " ".join(COMMAND), "cpu_class": machine_class(), "cpu_model": cpu_model()}, indent=2) + "\n")
        print(f"wrote {SAMPLE.relative_to(ROOT)} ({len(lines)} lines, {machine_class()} CPU)")
        return 0
    meta = json.loads(SAMPLE.with_suffix(".json").read_text())
    problems = differences(SAMPLE.read_text().splitlines(), lines, same_cpu=same_cpu(meta))
    for problem in problems:
        print(problem)
    print("the sample matches a fresh run" if not problems else f"{len(problems)} lines differ: "
          f"rerun `python tools/sample_output.py write`")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "check"))
