"""Per-epoch metrics into the run's MLflow run as they are measured, from whichever process trains.

The pipeline opens the MLflow run when it starts and names it in the environment (``RUN_ENV`` and
``MLFLOW_TRACKING_URI``), which every training process inherits, the ranks of a multi-process run
included; the rank-0 process logs each epoch's row under ``<stage kind>/<metric>``, step = epoch.
Tracking never decides a run: the first failure is one warning line, and logging stops there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

RUN_ENV = "CSKD_MLFLOW_RUN_ID"


def epoch_logger(prefix: str, warn: Callable[[str], None] = print) -> Callable[[dict], None] | None:
    """An ``on_epoch`` callback logging each row to the open MLflow run; None when none is open."""
    run_id, uri = os.environ.get(RUN_ENV), os.environ.get("MLFLOW_TRACKING_URI")
    if not run_id or not uri:
        return None
    try:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
    except Exception as exc:  # noqa: BLE001 - best effort, as all tracking
        warn(
            f"warning: MLflow tracking at {uri} failed ({type(exc).__name__}); epochs are not "
            "logged live"
        )
        return None
    failed: list[Exception] = []

    def log(row: dict) -> None:
        if failed:
            return
        stamp, step = int(time.time() * 1000), int(row["epoch"])
        metrics = [
            Metric(f"{prefix}/{key}", float(value), stamp, step)
            for key, value in row.items()
            if key != "epoch" and isinstance(value, int | float)
        ]
        try:
            client.log_batch(run_id, metrics=metrics)
        except Exception as exc:  # noqa: BLE001
            failed.append(exc)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            warn(
                f"warning: MLflow tracking at {uri} failed ({first[:200]}); later epochs are not "
                "logged live"
            )

    return log
