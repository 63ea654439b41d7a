"""Serving engines: thin adapters of the runner and codec (``runtime.py``) to a server.

Engines register like the export back-ends: ``ENGINES[name] = Engine(serve, missing)``. Each uses
its own dynamic batching (LitServe: ``litserve_engine.py``; Ray Serve: ``ray_engine.py``). The OIP's
metadata and health routes
need no model: they are plain routes on the engine's app.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serving.options import ServeOptions  # noqa: F401 - the engines' one argument, re-exported

INSTALL = "pip install 'cskd-pipeline[serve]'"


@dataclass(frozen=True)
class Engine:
    serve: Callable[[ServeOptions], None]
    missing: Callable[[], str | None]  # why it cannot run here (with the install line), or None


def _missing(*modules: str) -> Callable[[], str | None]:
    def check() -> str | None:
        absent = [m for m in modules if importlib.util.find_spec(m) is None]
        return f"{', '.join(absent)} not installed: {INSTALL}" if absent else None

    return check


def _serve_litserve(options: ServeOptions) -> None:
    import os
    import shutil

    from serving.metrics import FOLDER_ENV, use_folder

    # before prometheus_client loads; the workers inherit it
    os.environ[FOLDER_ENV] = folder = use_folder()
    from serving.litserve_engine import serve

    try:
        serve(options, add_routes=_add_protocol_routes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _metrics_response():
    from fastapi import Response

    from serving.metrics import exposition

    content, media_type = exposition()
    return Response(content=content, media_type=media_type)


def _add_protocol_routes(app, options: ServeOptions) -> None:
    """The OIP v2 routes that need no model (health and metadata), and the metrics."""
    from serving.codec import Codec
    from serving.runtime import Bundle

    codec = Codec(Bundle.open(options.bundle), options.model_name)
    platform = "openvino" if options.target.startswith("openvino") else "onnxruntime_onnx"
    app.add_api_route("/v2/health/live", lambda: {"live": True}, methods=["GET"])
    app.add_api_route(
        "/v2",
        lambda: {
            "name": "cskd-pipeline",
            "extensions": ["classification"],
            "models": [options.model_name],
        },
        methods=["GET"],
    )
    app.add_api_route(
        f"/v2/models/{options.model_name}", lambda: codec.metadata(platform), methods=["GET"]
    )
    app.add_api_route(
        f"/v2/models/{options.model_name}/ready", lambda: {"ready": True}, methods=["GET"]
    )
    version = f"/v2/models/{options.model_name}/versions/{codec.version}"
    app.add_api_route(version, lambda: codec.metadata(platform), methods=["GET"])
    app.add_api_route(f"{version}/ready", lambda: {"ready": True}, methods=["GET"])
    app.add_api_route("/metrics", _metrics_response, methods=["GET"])


def _serve_ray(options: ServeOptions) -> None:
    import shutil

    from serving.metrics import use_folder
    from serving.ray_engine import serve_forever

    folder = use_folder()  # set in the replicas only: Ray's own processes keep theirs
    try:
        serve_forever(options, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def launch_server(
    bundle: Path, cwd: Path, *args: str, env: dict | None = None, timeout_s: float = 180
):
    """``cskd-pipeline serve BUNDLE ARGS`` as a child process on a free port of 127.0.0.1; returns
    (process, url) once ``/v2/health/ready`` answers 200. Used by benchmarks and tests."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    binary = Path(sys.executable).parent / "cskd-pipeline"
    process = subprocess.Popen(
        [str(binary), "serve", str(bundle), "--port", str(port), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as answer:
                if answer.status == 200:
                    return process, url
        except OSError:  # not listening, or not ready (503) yet
            pass
        if process.poll() is not None:
            raise RuntimeError(f"serve exited {process.returncode}: {process.stdout.read()}")
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(
        f"the server did not become ready in {timeout_s:.0f} s: {process.stdout.read()}"
    )


def stop_server(process) -> None:
    """SIGTERM (the server shuts its workers down), then SIGKILL to its whole process group."""
    import os
    import signal
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # anything the server left behind
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


ENGINES: dict[str, Engine] = {
    "litserve": Engine(_serve_litserve, _missing("litserve", "fastapi")),
    "ray": Engine(_serve_ray, _missing("ray", "fastapi")),
}
