"""Regenerate tests/golden/losses.json from the independent reference (explicit command only):

    python -m tests.golden.make_golden

The fixture stores its inputs as well as the expected values, so it does not
depend on any random number generator's implementation.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np

from tests import reference as ref

OUT = Path(__file__).with_name("losses.json")


def main() -> None:
    rng = np.random.RandomState(2311_14307 % 2**32)
    b, c = 6, 5
    zs = np.round(rng.randn(b, c) * 2, 4)
    zt = np.round(rng.randn(b, c) * 3, 4)
    zs2 = np.round(rng.randn(b, c) * 2, 4)
    zt2 = np.round(rng.randn(b, c) * 3, 4)
    labels = rng.randint(0, c, size=b)
    temps = ref.cswt(zs, zt)
    expected = {
        "cs_loss_T4": ref.cs_loss(zs, zt, 4.0),
        "cs_loss_cswt": ref.cs_loss(zs, zt, temps),
        "cswt_temperatures": temps.tolist(),
        "kd_loss_T4": ref.kd_loss(zs, zt, 4.0),
        "dist_loss_tau4": ref.dist_loss(zs, zt, 4.0),
        "dkd_loss": ref.dkd_loss(zs, zt, labels),
        "class_correlation_T4": ref.cc_loss(zs, zt, 4.0),
        "batch_correlation_T4": ref.bc_loss(zs, zt, 4.0),
        "paper_kd_terms": ref.paper_kd_terms(zs, zt, zs2, zt2),
    }
    data = {"inputs": {"student": zs.tolist(), "teacher": zt.tolist(), "student_strong": zs2.tolist(),
                       "teacher_strong": zt2.tolist(), "labels": labels.tolist()},
            "expected": expected}
    if OUT.exists():
        os.chmod(OUT, stat.S_IWUSR | stat.S_IRUSR)
    OUT.write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(OUT, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # read-only: tests never rewrite it
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
