"""What the data fingerprint costs on a real image folder: the CIFAR-10 JPEG copy (60,000 files),
train and test fingerprints as a plan computes them, for three ways of keying files:

- ``stat (before)``: relative path, size and modification time (the default until this change);
- ``stat``: the default now, which adds the inode change time and the inode number;
- ``content``: the sha256 of every file's bytes.

Cold: the page cache dropped before the call (``/proc/sys/vm/drop_caches``, root only; the JSON
says when it could not be dropped). Warm: the same call again. Each in a fresh process.

    python benchmarks/fingerprint.py --cifar ../shared/data/cifar10-jpeg.tar.gz --out bench/fingerprint.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from int8_cpu import cifar_folder  # noqa: E402

from exports.cpu import recorded_flags  # noqa: E402

MODES = ("stat (before)", "stat", "content")

# One measurement, in a fresh process: no cache of an earlier call in this one.
_CHILD = r"""
import hashlib, sys, time
from pathlib import Path
import cskd.data.fingerprint as fp
root, mode = sys.argv[1], sys.argv[2]
if mode == "stat (before)":  # the entry as it was: path, size, modification time
    def entry(path, name, _mode):
        st = path.stat()
        return f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
    fp._entry = entry
    mode = "stat"
start = time.perf_counter()
fp.split_fingerprints("imagefolder", root, mode)
print(time.perf_counter() - start)
"""


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(folder: Path, mode: str, *, cold: bool) -> tuple[float, bool]:
    dropped = drop_caches() if cold else False
    out = subprocess.run([sys.executable, "-c", _CHILD, str(folder), mode], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return float(out.stdout.strip()), dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", type=Path, required=True, help="the CIFAR-10 JPEG copy (folder or .tar.gz)")
    parser.add_argument("--out", default="bench/fingerprint.json")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = cifar_folder(args.cifar, Path(scratch))
        files = sum(1 for p in folder.rglob("*") if p.is_file())
        rows = []
        for _ in range(args.repeats):  # interleaved: a slow spell of the shared machine hits every mode
            for mode in MODES:
                cold, dropped = measure(folder, mode, cold=True)
                warm, _ = measure(folder, mode, cold=False)
                rows.append({"mode": mode, "cold_s": round(cold, 3), "warm_s": round(warm, 3),
                             "cache_dropped": dropped})
    summary = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        summary[mode] = {k: round(sorted(r[k] for r in mine)[len(mine) // 2], 3) for k in ("cold_s", "warm_s")}
    base = summary["stat (before)"]
    for mode in MODES:
        summary[mode]["cold_vs_before"] = round(summary[mode]["cold_s"] / base["cold_s"], 2)
        summary[mode]["warm_vs_before"] = round(summary[mode]["warm_s"] / base["warm_s"], 2)
    result = {"cpu_flags": recorded_flags(), "files": files, "date": time.strftime("%Y-%m-%d"),
              "median_of": args.repeats, "summary": summary, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| mode | cold s | warm s | cold vs before | warm vs before |\n|---|---|---|---|---|")
    for mode, s in summary.items():
        print(f"| {mode} | {s['cold_s']:.2f} | {s['warm_s']:.2f} | {s['cold_vs_before']:.2f}x | "
              f"{s['warm_vs_before']:.2f}x |")


if __name__ == "__main__":
    main()
