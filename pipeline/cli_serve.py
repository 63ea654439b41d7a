"""``cskd-pipeline serve``: a shipped bundle behind the Open Inference Protocol, with dynamic batching."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click

from pipeline.cli_base import handle_errors, main
from serving.engines import ENGINES

_SERVER: dict = {}  # the serving process's id, and the signal that stopped it


def _stop(signum: int, _frame) -> None:
    """SIGTERM and Ctrl-C end ``serve`` the same way. The engine forks its HTTP processes, which inherit
    this handler; uvicorn in each catches the signal, shuts its server down and then raises the signal
    again: there it ends the process quietly instead of printing a KeyboardInterrupt traceback.
    It ends with ``os._exit``, not by raising: the second signal can land inside uvloop's own
    teardown, and an exception raised there left the loop half-closed and printed three chained
    tracebacks (seen once in a `make test` run, on Ctrl-C)."""
    if os.getpid() != _SERVER.get("pid"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    _SERVER["signal"] = signum
    # Ctrl-C reached the HTTP processes too, and they may end before the engine stops them: its
    # "already not alive" warnings about them are not news to anyone who pressed Ctrl-C.
    logging.getLogger("litserve.server").setLevel(logging.ERROR)
    raise KeyboardInterrupt


def resolve_bundle(what: str, ship_dir: Path) -> Path:
    """A bundle folder as given, or the latest shipped version of a name."""
    from foundation.errors import ManifestError
    from foundation.records import BundleRecord

    given = Path(what)
    if (given / BundleRecord.CARD).is_file():
        return given
    latest = ship_dir / what / "latest"
    if (latest / BundleRecord.CARD).is_file():
        return latest
    raise ManifestError(f"{what}: neither a bundle folder (with {BundleRecord.CARD}) nor a name shipped under "
                        f"{ship_dir}/ (no {latest}); give shipped/<name>/v<N> or a shipped name")


def _engine(name: str):
    """The engine named by ``--engine``: built in, or added by an installed plug-in (loaded now)."""
    from foundation import plugins
    from foundation.errors import ManifestError
    from serving.engines import Engine

    if name in ENGINES:
        return ENGINES[name]
    engine = plugins.load("engines", name)
    if engine is None:
        known = sorted({*ENGINES, *(p.name for p in plugins.installed("engines"))})
        raise ManifestError(f"--engine {name}: not one of {', '.join(known)}")
    if not isinstance(engine, Engine):
        raise plugins.failed("engines", name, "is not a serving.engines.Engine(serve, missing)")
    return engine


@main.command()
@click.argument("bundle")
@click.option("--target", default=None, help="the exported file to serve: onnx, onnx-int8, openvino, openvino-int8, "
                                             "... (default: the report's fastest within its budget)")
@click.option("--engine", default=None,
              help="the server: litserve (one machine; the default), ray (Ray Serve: one machine "
                   "or a cluster), or an engine an installed plug-in adds")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1, 64), help="inference workers")
@click.option("--max-batch", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="the largest batch dynamic batching forms (1: no batching)")
@click.option("--batch-wait-ms", default=2.0, show_default=True, type=click.FloatRange(0, 10_000),
              help="how long a batch waits to fill")
@click.option("--threads-per-replica", default=None, type=click.IntRange(1, 1024),
              help="compute threads of each worker (default: the runtime's)")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--max-body-mb", default=8.0, show_default=True, type=click.FloatRange(0.001, 4096),
              help="larger request bodies are refused (HTTP 413)")
@click.option("--request-timeout", "request_timeout_s", default=30.0, show_default=True,
              type=click.FloatRange(0.1, 3600), help="seconds a request may wait for its answer")
@click.option("--address", default=None, help="deploy onto an existing Ray cluster, e.g. 127.0.0.1:6379 (implies "
                                                "--engine ray)")
@click.option("--ship-dir", type=click.Path(path_type=Path), default=Path("shipped"), show_default=True,
              help="where shipped names are looked up")
@handle_errors
def serve(bundle: str, target: str | None, engine: str | None, replicas: int, max_batch: int, batch_wait_ms: float,
          threads_per_replica: int | None, host: str, port: int, max_body_mb: float, request_timeout_s: float,
          address: str | None,
          ship_dir: Path) -> None:
    """Serve a shipped bundle (a folder, or NAME for shipped/NAME/latest) over HTTP: the Open Inference
    Protocol v2 (/v2/models/<name>/infer, metadata, health) and /v1/classify (an image file in, its
    label and probabilities out), with dynamic batching.

    \b
    Examples: cskd-pipeline serve quickstart
              cskd-pipeline serve shipped/quickstart/v2 --target onnx-int8 --replicas 2 --port 8080
              cskd-pipeline serve quickstart --address 127.0.0.1:6379   (Ray Serve, on a running Ray cluster)
    """
    from foundation.bundle_seal import verify_bundle
    from foundation.errors import ManifestError, MissingBackend
    from pipeline.cli_base import registered_backends
    from serving.engines import ServeOptions
    from serving.runtime import Bundle

    if address is not None and engine == "litserve":
        raise ManifestError("--address deploys onto a Ray cluster: use --engine ray (or leave --engine out)")
    engine = engine or ("ray" if address is not None else "litserve")
    chosen = _engine(engine)
    missing = chosen.missing()
    if missing is not None:
        raise MissingBackend(f"serve --engine {engine}: {missing}")
    folder = resolve_bundle(bundle, ship_dir)
    sums = verify_bundle(folder)  # the server loads only what shipped, and runs none of the bundle's code
    opened = Bundle.open(folder)
    target = target or opened.fastest_target()
    known = registered_backends()
    files = [name for name in known[target].shipped if (folder / name).is_file()] if target in known else []
    if not files or not any(f.endswith((".onnx", ".xml")) for f in files):
        served = [t for t, b in known.items() if b.shipped and all((folder / n).is_file() for n in b.shipped)]
        raise ManifestError(f"--target {target}: not in {folder} or not servable here; this bundle has "
                            f"{', '.join(served)}")
    name, model = opened.name, next(f for f in files if f.endswith(('.onnx', '.xml')))
    click.echo(f"serving {folder} as model {name!r} version {opened.version} ({target}: {model} sha256 "
               f"{sums[model]}) on http://{host}:{port} with {engine}: POST /v2/models/{name}/infer, "
               f"POST /v1/classify, GET /v2/models/{name}, GET /v2/health/ready")
    _SERVER.update(pid=os.getpid(), signal=None)
    for signum in (signal.SIGTERM, signal.SIGINT):  # either shuts down every process it started, quietly
        signal.signal(signum, _stop)
    chosen.serve(ServeOptions(bundle=folder.resolve(), target=target, files=files, model_name=name,
                                       replicas=replicas, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                                       threads_per_replica=threads_per_replica, host=host, port=port,
                                       max_body_mb=max_body_mb, request_timeout_s=request_timeout_s,
                                       address=address))
    if _SERVER["signal"] is not None:
        click.echo(f"serve: stopped by {signal.Signals(_SERVER['signal']).name}; every process it started has ended")


@main.command()
@click.argument("url")
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1, 10_000),
              help="simulated clients, each sending one image and waiting for the answer")
@click.option("--duration", "duration_s", default=20.0, show_default=True, type=click.FloatRange(1, 86_400),
              help="seconds measured (after 2 s of ramp-up)")
@click.option("--rate", default=None, type=click.FloatRange(0.1, 1e6),
              help="requests per second in total (open loop); default: as fast as answers come")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="a folder of image files sent to /v1/classify; default: random tensors of the model's input "
                   "shape through /v2/models/<name>/infer")
@click.option("--json-tensors", is_flag=True, help="send the tensors as JSON lists of numbers (default: the binary "
                                                   "tensor extension, as tritonclient does)")
@click.option("--model", default=None, help="the model name (default: the one the server serves)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="also write the figures as JSON here")
@handle_errors
def loadtest(url: str, concurrency: int, duration_s: float, rate: float | None, images: Path | None,
             json_tensors: bool, model: str | None, out: Path | None) -> None:
    """Load-test a served model with Locust (headless, in its own process): throughput, p50/p90/p99, errors.

    \b
    Examples: cskd-pipeline loadtest http://127.0.0.1:8000 --concurrency 32 --duration 20
              cskd-pipeline loadtest http://127.0.0.1:8000 --images data/my-images/test --rate 200 --out load.json
    """
    import json

    import requests

    from foundation.errors import ManifestError
    from serving.loadtest import run_load

    url = url.rstrip("/")
    try:
        model = model or requests.get(f"{url}/v2", timeout=10).json()["models"][0]
    except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
        raise ManifestError(f"{url}: no model server answers /v2 there ({type(exc).__name__}); start one with "
                            f"`cskd-pipeline serve` or give --model") from None
    figures = run_load({"url": url, "model": model, "concurrency": concurrency, "duration_s": duration_s,
                        "rate": rate, "images": str(images) if images else None, "binary": not json_tensors})
    click.echo("| concurrency | requests | failures | throughput req/s | p50 ms | p90 ms | p99 ms |\n"
               "|---|---|---|---|---|---|---|")
    click.echo(f"| {concurrency} | {figures['requests']} | {figures['failures']} | {figures['throughput_rps']:.1f} | "
               f"{figures['p50_ms']:.1f} | {figures['p90_ms']:.1f} | {figures['p99_ms']:.1f} |")
    for error, count in figures["errors"].items():
        click.echo(f"error x{count}: {error}")
    if out is not None:
        out.write_text(json.dumps(figures, indent=2) + "\n")
