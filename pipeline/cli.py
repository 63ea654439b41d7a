"""The ``cskd-pipeline`` command line: the pipeline commands (run, plan, validate, export) here,
the others in ``cli_manage``, ``cli_release``, ``cli_data``, ``cli_serve`` and ``cli_study``, all registered on
the group in ``cli_base`` (exit codes there)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from pipeline import cli_data, cli_manage, cli_release, cli_search, cli_serve, cli_study  # noqa: F401 - their commands register on main
from pipeline.cli_base import (  # noqa: F401 - main is the entry point; the rest is re-exported for tests
    handle_errors,
    load_from_option,
    main,
    manifest_option,
    registered_backends,
    resolve_manifest_path,
    set_option,
)


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
    manifest = load_from_option(manifest_opt, overrides)
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
    from foundation.store import ArtifactStore
    from pipeline.orchestrator import on_demand
    from pipeline.orchestrator import plan as plan_graph

    manifest = load_from_option(manifest_opt, overrides)
    store = ArtifactStore(manifest.store)
    steps = plan_graph(manifest)
    deferred = on_demand(steps)
    rows = [{"stage": step.kind, "id": step.id, "cached": store.has(step.kind, step.id),
             "on_demand": step.kind in deferred} for step in steps]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if (line := manifest.export.auto_line()) is not None:
        click.echo(line)
    for row in rows:
        state = "cached" if row["cached"] else "if needed" if row["on_demand"] else "to run"
        click.echo(f"{row['stage']:<9} {row['id']}  {state}")


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


TRITON = "triton"  # not a back-end: a Triton model repository of every target the manifest exports


class TargetType(click.ParamType):
    """An export target of the back-end registry, checked when the command runs (so that
    ``import pipeline.cli`` and ``--help`` stay light)."""

    name = "target"

    def convert(self, value, param, ctx):
        known = [*registered_backends(), TRITON]
        if value not in known:
            self.fail(f"{value!r} is not an export target; choose from {', '.join(known)}", param, ctx)
        return value


@main.command()
@click.argument("source", required=False, metavar="[NAME[@vN]]")
@manifest_option
@click.option("--target", type=TargetType(), default="onnx", show_default=True,
              help="what to export: onnx, onnx-fp16, onnx-int8, trt, openvino, openvino-int8, or any other "
                   "registered back-end (`cskd-pipeline targets`); triton: a Triton model repository of every "
                   "target in export.targets")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="the folder the exported file(s) are written into (default: exported/<manifest name>); "
                   "files the export did not write there are never replaced")
@click.option("--ship-dir", type=click.Path(path_type=Path), default=None,
              help="with NAME: the folder holding <name>/v<N>/ (default: the manifest's ship.dir, else shipped)")
@set_option
@click.option("-q", "--quiet", is_flag=True, help="no progress bars")
@handle_errors
def export(source: str | None, manifest_opt: str | None, target: str, out: Path | None, ship_dir: Path | None,
           overrides: tuple[str, ...], quiet: bool) -> None:
    """Export a shipped version (NAME, NAME@vN: its verified files, nothing retrained), or the
    manifest's student (training teacher and student first if they are not cached), into a folder
    of your choice outside the store; print what was written.

    \b
    Examples: cskd-pipeline export quickstart@v1 --target onnx-int8 --out deploy/
              cskd-pipeline export --target trt
              cskd-pipeline export --target openvino-int8 -m resnet8x4
              cskd-pipeline export --target triton --out model_repository/
    """
    from foundation.backends import backend
    from foundation.files import check_owned_files, copy_owned_files
    from foundation.manifest import Manifest
    from pipeline.orchestrator import run_pipeline
    from pipeline.shipped_export import check_out_folder, export_shipped

    if source is not None:
        import stages  # noqa: F401 - the back-end registry

        manifest = load_from_option(manifest_opt, overrides) if manifest_opt or overrides else None
        ship = ship_dir or Path(manifest.ship.dir if manifest else "shipped")
        protected = ({"store": Path(manifest.store), "report.dir": Path(manifest.report.dir)} if manifest else
                     {"store": Path(".cskd"), "report.dir": Path("reports")})
        _, line = export_shipped(source, target, out, ship_dir=ship, protected={**protected, "ship.dir": ship})
        click.echo(line)
        return
    manifest = load_from_option(manifest_opt, overrides)
    if out is not None:
        check_out_folder(out, {"store": Path(manifest.store), "report.dir": Path(manifest.report.dir),
                               "ship.dir": Path(manifest.ship.dir)})
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
    from foundation.backends import backend
    from foundation.errors import OutputError
    from foundation.records import BundleRecord, kind_of, need
    from pipeline.orchestrator import run_pipeline

    try:
        check_repository_folder(out)  # before any compute
    except FileExistsError as exc:
        raise OutputError(str(exc)) from None
    outcome = run_pipeline(manifest, until=kind_of(BundleRecord), progress=not quiet and sys.stderr.isatty(),
                           quiet=quiet)
    bundle = need(outcome.artifacts, BundleRecord).file(BundleRecord.CARD).parent
    targets = [t for t in manifest.export.targets if backend(t).shipped]
    preferred = tuple(b for b in (manifest.latency.batch_sizes if manifest.latency else [64]) if b > 1)
    batching = Batching(max_batch_size=manifest.export.trt.max_batch, preferred=preferred)
    return write_repository(bundle, out, {t: [n for n in backend(t).shipped if not n.endswith(".json")] for t in targets},
                            name=manifest.name, batching=batching,
                            gpu_targets=frozenset(t for t in targets if backend(t).device == "cuda"))


if __name__ == "__main__":  # python -m pipeline.cli
    main()
