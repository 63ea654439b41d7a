"""What the engines share without importing their registry (``engines.py`` imports them): the
options of one server, and the adapter of a bad request to HTTP 400."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServeOptions:
    bundle: Path
    target: str
    files: list[str]          # the bundle's files of the target
    model_name: str
    replicas: int = 1
    max_batch: int = 64
    batch_wait_ms: float = 2.0
    threads_per_replica: int | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_mb: float = 8.0
    request_timeout_s: float = 30.0
    address: str | None = None


def checked(decode, *args):
    """``decode(*args)``, a ``BadRequest`` answered as HTTP 400 with its message (both engines)."""
    from fastapi import HTTPException

    from serving.codec import BadRequest

    try:
        return decode(*args)
    except BadRequest as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
