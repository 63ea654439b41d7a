"""Reaching MLflow, for the run tracking (``pipeline.tracking``) and the registry
(``pipeline.registry``) alike: where it is, importing it quietly, one warning line on failure,
and keeping MLflow's own output out of the pipeline's."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path

from foundation.manifest import Manifest


def tracking_uri(manifest: Manifest | None) -> str | None:
    section = manifest.tracking.mlflow if manifest is not None else None
    return (section.uri if section is not None and section.uri else None) or os.environ.get("MLFLOW_TRACKING_URI")


def mlflow_or_warn(uri: str, echo: Callable[[str], None]):
    """mlflow, set up to fail fast and quietly, or None with one warning line: not installed, or a
    SQLite file that cannot be written (MLflow would retry for minutes)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an unreachable server: one try
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        folder = path.parent if str(path.parent) else Path(".")
        if not (os.access(path, os.W_OK) if path.exists() else folder.is_dir() and os.access(folder, os.W_OK)):
            echo(f"warning: MLflow tracking at {uri} failed (cannot write {path}); the run's report and bundle are "
                 f"on disk")
            return None
    try:
        import mlflow
    except ImportError:
        echo("warning: MLflow tracking is configured but mlflow is not installed; pip install 'cskd-pipeline[mlflow]'")
        return None
    for name in ("mlflow", "alembic", "urllib3"):  # their INFO lines are not the pipeline's output
        logging.getLogger(name).setLevel(logging.ERROR)
    if uri.startswith("sqlite:///"):
        try:
            _create_sqlite_schema(mlflow, uri, path)
        except Exception as exc:  # noqa: BLE001 - tracking is best effort by design
            warn(echo, uri, exc)
            return None
    return mlflow


def _create_sqlite_schema(mlflow, uri: str, path: Path) -> None:
    """MLflow creates a new SQLite store's tables on first use, and two processes doing that at
    once fail ("duplicate column name"): two runs, or a study's cells, started against one new
    file. The first to take the lock creates them; the rest find them made. Taken every time: a
    file that exists may be one whose tables another process is still creating."""
    from filelock import FileLock

    with FileLock(f"{path}.lock", timeout=300), quiet_output():
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def warn(echo: Callable[[str], None], uri: str, exc: Exception) -> None:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    echo(f"warning: MLflow tracking at {uri} failed ({first[:200]}); the run's report and bundle are on disk")


@contextlib.contextmanager
def quiet_output():
    """MLflow prints to stdout and stderr itself (run links, migration notes): not into ours. And
    ``mlflow.set_tracking_uri`` writes MLFLOW_TRACKING_URI into the environment: put it back, or the
    next run in this process (a study's cells, a test) would track to this run's server."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
