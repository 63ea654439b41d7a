"""The ``cskd-pipeline`` command line.

Exit codes: 0 ok, 1 gate failed, 2 bad input, 3 missing optional back-end or
hardware, 4 failure at run time, 130/143 interrupted.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path

import click

from pipeline.core.errors import (
    EXIT_BAD_INPUT,
    EXIT_MISSING_BACKEND,
    EXIT_RUNTIME,
    ManifestError,
    PipelineError,
)

DEFAULT_MANIFEST = Path("manifests") / "quickstart.yaml"
LOCAL_MANIFEST = Path("manifest.yaml")  # what `init DIR` writes: `cd DIR && cskd-pipeline run` finds it


def _fail(message: str, code: int) -> None:
    for line in message.splitlines() or [""]:  # one line per problem, each with the prefix
        click.echo(f"cskd-pipeline: error: {line}", err=True)
    sys.exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Map every expected failure to one line on stderr and its exit code (no traceback)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        from cskd.engine import Interrupted
        from cskd.errors import CheckpointError, DataError
        from exports.errors import BackendUnavailable

        try:
            return fn(*args, **kwargs)
        except PipelineError as exc:
            _fail(str(exc), exc.exit_code)
        except (DataError, CheckpointError) as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
        except BackendUnavailable as exc:
            _fail(str(exc), EXIT_MISSING_BACKEND)
        except Interrupted as exc:
            _fail(str(exc), 128 + exc.signum)  # 130 for SIGINT, 143 for SIGTERM
        except KeyboardInterrupt:
            _fail("interrupted; rerun the same command to resume", 130)
        except Exception as exc:  # a bug or an environment failure: one line, traceback on request
            if os.environ.get("CSKD_DEBUG"):
                raise
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                _fail(f"disk full while writing {exc.filename or 'the store'}; free space and rerun "
                      f"(nothing partial was committed)", EXIT_RUNTIME)
            _fail(f"{type(exc).__name__}: {exc} (set CSKD_DEBUG=1 for the traceback)", EXIT_RUNTIME)

    return wrapper


def resolve_manifest_path(value: str | None) -> Path:
    """``-m`` takes a path, or a bare name: ``./NAME.yaml``, then ``manifests/NAME.yaml`` (with or
    without .yaml). Without ``-m``: ``./manifest.yaml`` (what ``init`` writes), else the quickstart."""
    if value is None:
        for default in (LOCAL_MANIFEST, DEFAULT_MANIFEST):
            if default.is_file():
                return default
        raise ManifestError(f"no manifest given, and neither {LOCAL_MANIFEST} nor {DEFAULT_MANIFEST} is here; "
                            f"pass -m PATH, or write one with `cskd-pipeline init`")
    path = Path(value)
    if path.exists():
        return path
    for candidate in (Path(f"{value}.yaml"), Path("manifests") / value, Path("manifests") / f"{value}.yaml"):
        if candidate.is_file():
            return candidate
    return path  # load_manifest reports it as not found


def _load(manifest_opt: str | None, overrides: tuple[str, ...] = ()):
    from pipeline.manifest_io import load_manifest

    return load_manifest(resolve_manifest_path(manifest_opt), overrides)


manifest_option = click.option("-m", "--manifest", "manifest_opt", metavar="PATH",
                               help="manifest file, or a name: ./NAME.yaml, then manifests/NAME.yaml (default: ./manifest.yaml, "
                                    "else manifests/quickstart.yaml)")
set_option = click.option("-o", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="override a manifest value, e.g. -o student.train.epochs=3 (repeatable; validated "
                               "like the file and part of the ids)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cskd-pipeline", prog_name="cskd-pipeline")
def main() -> None:
    """Declarative compression pipeline: teacher, CS-KD distillation, export, validation, gate, ship.

    \b
    Start:    cskd-pipeline init my-project && cd my-project && cskd-pipeline run
    Examples: cskd-pipeline run -m quickstart -o student.train.epochs=5
              cskd-pipeline plan --json
    """


@main.command()
@manifest_option
@set_option
@click.option("-q", "--quiet", is_flag=True, help="no progress bars and no per-epoch lines (the run's log keeps them)")
@click.option("--nproc", type=click.IntRange(1, 64), default=None,
              help="processes for the training stages (overrides distributed.nproc)")
@click.option("--nnodes", type=click.IntRange(1, 4096), default=None,
              help="machines training together, one `run` each (overrides distributed.nnodes)")
@click.option("--node-rank", type=click.IntRange(0, 4095), default=None,
              help="this machine's number, 0..nnodes-1 (overrides distributed.node_rank)")
@click.option("--rdzv-endpoint", default=None, metavar="HOST:PORT",
              help="node 0's address for the c10d rendezvous, the same on every node (overrides distributed.rdzv_endpoint)")
@click.option("-v", "--verbose", is_flag=True,
              help="print each stage's recipe and inputs as it starts, and the traceback of an unexpected error")
@click.option("--force", "force", multiple=True, metavar="STAGE",
              help="recompute STAGE and what depends on it even if cached (e.g. --force latency to remeasure)")
@handle_errors
def run(manifest_opt: str | None, overrides: tuple[str, ...], quiet: bool, nproc: int | None, nnodes: int | None,
        node_rank: int | None, rdzv_endpoint: str | None, verbose: bool, force: tuple[str, ...]) -> None:
    """Run every stage; reuse what is cached; ship the student if the gate passes.

    \b
    Examples: cskd-pipeline run -m resnet8x4
              cskd-pipeline run -o 'student.loss={kind: kd}' -o student.train.seed=1
              cskd-pipeline run --force latency
              cskd-pipeline run --nnodes 2 --node-rank 0 --rdzv-endpoint node0:29400   (and node 1 with --node-rank 1)
    """
    if not quiet and sys.stderr.isatty():  # the first line within a second, before torch loads
        click.echo(f"cskd-pipeline run: loading {manifest_opt or 'the manifest'} and planning ...", err=True)
    from pipeline.orchestrator import run_pipeline

    flags = {"nproc": nproc, "nnodes": nnodes, "node_rank": node_rank, "rdzv_endpoint": rdzv_endpoint}
    overrides = (*overrides, *(f"distributed.{k}={v}" for k, v in flags.items() if v is not None))
    manifest = _load(manifest_opt, overrides)
    if verbose:
        os.environ["CSKD_DEBUG"] = "1"  # handle_errors re-raises unexpected errors with their traceback
    outcome = run_pipeline(manifest, progress=not quiet and sys.stderr.isatty(), quiet=quiet, force=force,
                           verbose=verbose)
    if manifest.distributed.node_rank != 0:
        click.echo(f"node {manifest.distributed.node_rank}: training done; node 0 commits, validates and ships")
        return
    ran = [r.kind for r in outcome.reports if r.status == "ran"]
    shipped = Path(os.path.relpath(outcome.shipped))  # the folders as the user named them
    click.echo(f"report: {os.path.relpath(outcome.report_dir)}/report.html")
    click.echo(f"shipped {shipped}/ ({', '.join(sorted(p.name for p in shipped.iterdir() if not p.name.startswith('.')))}); "
               + (f"ran: {', '.join(ran)}" if ran else "nothing recomputed: every stage was cached"))


@main.command()
@manifest_option
@set_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def plan(manifest_opt: str | None, overrides: tuple[str, ...], as_json: bool) -> None:
    """Each stage's artifact id and whether it is cached (no compute).

    \b
    Example:  cskd-pipeline plan -o data.max_test_samples=500   (what would rerun)
    """
    from pipeline.core.store import ArtifactStore
    from pipeline.orchestrator import plan as plan_graph

    manifest = _load(manifest_opt, overrides)
    store = ArtifactStore(manifest.store)
    rows = [{"stage": step.kind, "id": step.id, "cached": store.has(step.kind, step.id)} for step in plan_graph(manifest)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if (line := manifest.export.auto_line()) is not None:
        click.echo(line)
    for row in rows:
        click.echo(f"{row['stage']:<9} {row['id']}  {'cached' if row['cached'] else 'to run'}")


@main.command()
@manifest_option
@set_option
@handle_errors
def validate(manifest_opt: str | None, overrides: tuple[str, ...]) -> None:
    """Check the manifest completely; no compute.

    \b
    Example:  cskd-pipeline validate -m manifests/resnet8x4.yaml
    """
    path = resolve_manifest_path(manifest_opt)
    from pipeline.manifest_io import load_manifest
    from pipeline.orchestrator import check_inputs

    manifest = load_manifest(path, overrides)
    check_inputs(manifest)
    click.echo(f"{path}: valid ({manifest.name}: {manifest.teacher.model} -> {manifest.student.model}, "
               f"loss {manifest.student.loss.kind}, data {manifest.data.name})")


def _registered_backends() -> dict:
    import stages  # noqa: F401 - registers the back-ends
    from pipeline.core.backends import backends

    return backends()


TRITON = "triton"  # not a back-end: a Triton model repository of every target the manifest exports


class TargetType(click.ParamType):
    """An export target of the back-end registry, checked when the command runs (so that
    ``import pipeline.cli`` and ``--help`` stay light)."""

    name = "target"

    def convert(self, value, param, ctx):
        known = [*_registered_backends(), TRITON]
        if value not in known:
            self.fail(f"{value!r} is not an export target; choose from {', '.join(known)}", param, ctx)
        return value


@main.command()
@manifest_option
@click.option("--target", type=TargetType(), default="onnx", show_default=True,
              help="what to export: onnx, onnx-fp16, onnx-int8, trt, openvino, openvino-int8, or any other "
                   "registered back-end (`cskd-pipeline targets`); triton: a Triton model repository of every "
                   "target in export.targets")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="the folder the exported file(s) are written into (default: exported/<manifest name>); "
                   "files the export did not write there are never replaced")
@set_option
@click.option("-q", "--quiet", is_flag=True, help="no progress bars")
@handle_errors
def export(manifest_opt: str | None, target: str, out: Path | None, overrides: tuple[str, ...], quiet: bool) -> None:
    """Export the student (training teacher and student first if they are not cached) into a folder
    of your choice, outside the store; print the path of each file written.

    \b
    Examples: cskd-pipeline export --target trt
              cskd-pipeline export --target onnx-int8 --out deploy/
              cskd-pipeline export --target openvino-int8 -m resnet8x4
              cskd-pipeline export --target triton --out model_repository/
    """
    from pipeline.core.backends import backend
    from pipeline.core.files import check_owned_files, copy_owned_files
    from pipeline.core.manifest import Manifest
    from pipeline.orchestrator import run_pipeline

    manifest = _load(manifest_opt, overrides)
    if target == TRITON:
        for path in _export_triton(manifest, out if out is not None else Path("exported") / f"{manifest.name}-triton",
                                   quiet=quiet):
            click.echo(str(path))
        return
    # Export what was asked even if the manifest does not list it, with what it is built from.
    wanted, todo = list(manifest.export.targets), [target]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.append(name)
            todo.extend(backend(name).requires(manifest.export))
    data = manifest.model_dump(mode="json", by_alias=True)
    data["export"]["targets"] = wanted
    manifest = Manifest.model_validate(data)
    spec = backend(target)
    folder = out if out is not None else Path("exported") / manifest.name
    files = spec.shipped or {Path(spec.file).name: spec.file}
    check_owned_files(folder, list(files))  # a bad --out is refused before any compute
    outcome = run_pipeline(manifest, until=spec.kind, progress=not quiet and sys.stderr.isatty())
    artifact = outcome.artifacts[spec.kind]
    for path in copy_owned_files(folder, {name: artifact.file(inside) for name, inside in files.items()}):
        click.echo(str(path))


def _export_triton(manifest, out: Path, *, quiet: bool) -> list[Path]:
    """The bundle the manifest ships (built, not published) as a Triton model repository in ``out``."""
    from exports.triton import Batching, check_repository_folder, write_repository
    from pipeline.core.backends import backend
    from pipeline.core.errors import OutputError
    from pipeline.orchestrator import run_pipeline

    try:
        check_repository_folder(out)  # before any compute
    except FileExistsError as exc:
        raise OutputError(str(exc)) from None
    outcome = run_pipeline(manifest, until="ship", progress=not quiet and sys.stderr.isatty(), quiet=quiet)
    bundle = outcome.artifacts["ship"].file("model_card.json").parent
    targets = [t for t in manifest.export.targets if backend(t).shipped]
    preferred = tuple(b for b in (manifest.latency.batch_sizes if manifest.latency else [64]) if b > 1)
    batching = Batching(max_batch_size=manifest.export.trt.max_batch, preferred=preferred)
    return write_repository(bundle, out, {t: [n for n in backend(t).shipped if not n.endswith(".json")] for t in targets},
                            name=manifest.name, batching=batching,
                            gpu_targets=frozenset(t for t in targets if backend(t).device == "cuda"))


from pipeline import cli_data, cli_manage, cli_serve, cli_study  # noqa: E402, F401 - registers runs, diff, init, gc, serve, study, shard

if __name__ == "__main__":
    # Run as `python -m pipeline.cli` this file is __main__: the commands in cli_manage were
    # registered on the importable pipeline.cli module, so run that module's group.
    from pipeline.cli import main as registered_main

    registered_main()
