"""Prometheus metrics of a served model, at ``GET /metrics``: requests by route and status, their
latency, and the sizes of the batches dynamic batching formed.

Both engines answer from several processes (LitServe's inference workers and API server, Ray
Serve's replicas), so the metrics use prometheus_client's multiprocess mode: every process
writes its values into one folder and ``/metrics`` adds them up. ``use_folder`` must run before
prometheus_client is imported in the server's process; the engines' processes inherit it.
"""

from __future__ import annotations

import os
import tempfile
import time

FOLDER_ENV = "PROMETHEUS_MULTIPROC_DIR"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def use_folder() -> str:
    """A fresh folder for this server's metrics (a stale one would add a dead server's counts)."""
    return tempfile.mkdtemp(prefix="cskd-serve-metrics-")


class _Metrics:
    """Created on first use, in the process that observes (after ``use_folder``'s variable is
    set)."""

    def __init__(self):
        from prometheus_client import Counter, Histogram

        self.requests = Counter("cskd_requests", "HTTP requests answered", ["route", "status"])
        self.latency = Histogram(
            "cskd_request_seconds",
            "time from a request's arrival to its answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
        )
        self.batch = Histogram(
            "cskd_batch_size",
            "images per model call, as dynamic batching formed them",
            buckets=BATCH_BUCKETS,
        )


_metrics: _Metrics | None = None


def metrics() -> _Metrics:
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


def observe_batch(images: int) -> None:
    metrics().batch.observe(images)


def exposition() -> tuple[bytes, str]:
    """The text format of every process's metrics added up (one process's where no folder is
    set)."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    metrics()  # the families exist, at zero, before the first request
    if os.environ.get(FOLDER_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def _route(path: str) -> str:
    """A bounded label: the model's infer route, classify, or 'other' (health, metadata,
    metrics)."""
    if path.endswith("/infer"):
        return "infer"
    return "classify" if path == "/v1/classify" else "other"


class Measured:
    """ASGI middleware: counts every HTTP request by route and status and times it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), {"code": 500}

        async def recording(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = _route(scope["path"])
            metrics().requests.labels(route, str(status["code"])).inc()
            metrics().latency.labels(route).observe(time.perf_counter() - start)
