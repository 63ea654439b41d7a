"""Serving engines: thin adapters of the runner and codec (``serving.py``) to a server.

Engines register like the export back-ends: ``ENGINES[name] = Engine(serve, missing)``. Each uses
its own dynamic batching (LitServe: ``serve_litserve.py``). The OIP's metadata and health routes
need no model: they are plain routes on the engine's app.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

INSTALL = "pip install 'cskd-pipeline[serve]'"


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
    address: str | None = None


@dataclass(frozen=True)
class Engine:
    serve: Callable[[ServeOptions], None]
    missing: Callable[[], str | None]   # why it cannot run here (with the install line), or None


def _missing(*modules: str) -> Callable[[], str | None]:
    def check() -> str | None:
        absent = [m for m in modules if importlib.util.find_spec(m) is None]
        return f"{', '.join(absent)} not installed: {INSTALL}" if absent else None
    return check


def _serve_litserve(options: ServeOptions) -> None:
    from pipeline.serve_litserve import serve

    serve(options, add_routes=_add_protocol_routes)


def _add_protocol_routes(app, options: ServeOptions) -> None:
    """The OIP v2 routes that need no model: health and metadata."""
    from pipeline.serving import Bundle, Codec

    codec = Codec(Bundle.open(options.bundle), options.model_name)
    platform = "openvino" if options.target.startswith("openvino") else "onnxruntime_onnx"
    app.add_api_route("/v2/health/live", lambda: {"live": True}, methods=["GET"])
    app.add_api_route("/v2", lambda: {"name": "cskd-pipeline", "extensions": ["classification"],
                                      "models": [options.model_name]}, methods=["GET"])
    app.add_api_route(f"/v2/models/{options.model_name}", lambda: codec.metadata(platform), methods=["GET"])
    app.add_api_route(f"/v2/models/{options.model_name}/ready", lambda: {"ready": True}, methods=["GET"])


ENGINES: dict[str, Engine] = {
    "litserve": Engine(_serve_litserve, _missing("litserve", "fastapi")),
}
