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
    """``-m`` takes a path, or a bare name looked up in ./manifests (with or without .yaml)."""
    if value is None:
        if not DEFAULT_MANIFEST.is_file():
            raise ManifestError(f"no manifest given and {DEFAULT_MANIFEST} not found here; pass -m PATH")
        return DEFAULT_MANIFEST
    path = Path(value)
    if path.exists():
        return path
    for candidate in (Path("manifests") / value, Path("manifests") / f"{value}.yaml"):
        if candidate.is_file():
            return candidate
    return path  # load_manifest reports it as not found


def _load(manifest_opt: str | None):
    from pipeline.manifest_io import load_manifest

    return load_manifest(resolve_manifest_path(manifest_opt))


manifest_option = click.option("-m", "--manifest", "manifest_opt", metavar="PATH",
                               help="manifest file, or a name in ./manifests (default: manifests/quickstart.yaml)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Declarative compression pipeline: teacher, CS-KD distillation, export, validation, gate, ship."""


@main.command()
@manifest_option
@click.option("-q", "--quiet", is_flag=True, help="no progress bars and no per-epoch lines (the run's log keeps them)")
@click.option("--nproc", type=click.IntRange(1, 64), default=None,
              help="processes for the training stages (overrides distributed.nproc)")
@handle_errors
def run(manifest_opt: str | None, quiet: bool, nproc: int | None) -> None:
    """Run every stage; reuse what is cached; ship the student if the gate passes."""
    from pipeline.orchestrator import run_pipeline

    manifest = _load(manifest_opt)
    if nproc is not None:
        manifest = manifest.model_copy(update={"distributed": manifest.distributed.model_copy(update={"nproc": nproc})})
    outcome = run_pipeline(manifest, progress=not quiet and sys.stderr.isatty(), quiet=quiet)
    ran = [r.kind for r in outcome.reports if r.status == "ran"]
    shipped = Path(os.path.relpath(outcome.shipped))  # the folders as the user named them
    click.echo(f"report: {os.path.relpath(outcome.report_dir)}/report.html")
    click.echo(f"shipped {shipped}/ ({', '.join(sorted(p.name for p in shipped.iterdir() if not p.name.startswith('.')))}); "
               + (f"ran: {', '.join(ran)}" if ran else "nothing recomputed: every stage was cached"))


@main.command()
@manifest_option
@handle_errors
def plan(manifest_opt: str | None) -> None:
    """Each stage's artifact id and whether it is cached (no compute)."""
    from pipeline.core.store import ArtifactStore
    from pipeline.orchestrator import plan as plan_graph

    manifest = _load(manifest_opt)
    store = ArtifactStore(manifest.store)
    for step in plan_graph(manifest):
        state = "cached" if store.has(step.kind, step.id) else "to run"
        click.echo(f"{step.kind:<9} {step.id}  {state}")


@main.command()
@manifest_option
@handle_errors
def validate(manifest_opt: str | None) -> None:
    """Check the manifest completely; no compute."""
    path = resolve_manifest_path(manifest_opt)
    from pipeline.manifest_io import load_manifest

    manifest = load_manifest(path)
    click.echo(f"{path}: valid ({manifest.name}: {manifest.teacher.model} -> {manifest.student.model}, "
               f"loss {manifest.student.loss.kind}, data {manifest.data.name})")


@main.command()
@handle_errors
def schema() -> None:
    """Print the manifest's JSON schema."""
    from pipeline.manifest_io import Manifest

    click.echo(json.dumps(Manifest.model_json_schema(by_alias=True), indent=2))


def _registered_backends() -> dict:
    import stages  # noqa: F401 - registers the back-ends
    from pipeline.core.backends import backends

    return backends()


class TargetType(click.ParamType):
    """An export target of the back-end registry, checked when the command runs (so that
    ``import pipeline.cli`` and ``--help`` stay light)."""

    name = "target"

    def convert(self, value, param, ctx):
        known = _registered_backends()
        if value not in known:
            self.fail(f"{value!r} is not an export target; choose from {', '.join(known)}", param, ctx)
        return value


@main.command()
def targets() -> None:
    """List the export targets (registered back-ends) and what each is."""
    for name, spec in _registered_backends().items():
        click.echo(f"{name:<14} {spec.description}")


@main.command()
@manifest_option
@click.option("--target", type=TargetType(), default="onnx", show_default=True,
              help="what to export: onnx, onnx-fp16, onnx-int8, trt, openvino, openvino-int8, or any other "
                   "registered back-end (`cskd-pipeline targets`)")
@click.option("--quiet", is_flag=True, help="no progress bars")
@handle_errors
def export(manifest_opt: str | None, target: str, quiet: bool) -> None:
    """Export the student (training teacher and student first if they are not cached)."""
    from pipeline.core.backends import backend
    from pipeline.core.manifest import Manifest
    from pipeline.orchestrator import run_pipeline

    manifest = _load(manifest_opt)
    # Export what was asked even if the manifest does not list it, with what it is built from.
    wanted, todo = list(manifest.export.targets), [target]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.append(name)
            todo.extend(backend(name).requires)
            if name == "trt":
                todo.append(manifest.export.trt.source)
    data = manifest.model_dump(mode="json", by_alias=True)
    data["export"]["targets"] = wanted
    manifest = Manifest.model_validate(data)
    spec = backend(target)
    outcome = run_pipeline(manifest, until=spec.kind, progress=not quiet and sys.stderr.isatty())
    click.echo(str(outcome.artifacts[spec.kind].file(spec.file)))


@main.command()
@manifest_option
@click.option("--baseline", "baseline_path", required=True, type=click.Path(path_type=Path),
              help="committed baseline JSON (metrics, tolerances, directions)")
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="report.json of a run (default: the manifest's report folder)")
@handle_errors
def gate(manifest_opt: str | None, baseline_path: Path, report_path: Path | None) -> None:
    """CI regression gate: compare a run's report with a baseline; exit 1 on a regression."""
    from pipeline.core.errors import GateFailed
    from pipeline.regression import compare, load_baseline, load_json, markdown

    baseline = load_baseline(baseline_path)
    if report_path is None:
        manifest = _load(manifest_opt)
        report_path = Path(manifest.report.dir) / manifest.name / "latest" / "report.json"
    rows = compare(baseline, load_json(report_path, "report (run the pipeline first)"), report_path)
    click.echo(markdown(rows, report_path=report_path, baseline_path=baseline_path))
    failed = [r["metric"] for r in rows if not r["passed"]]
    if failed:
        raise GateFailed(f"regression in {', '.join(failed)} against {baseline_path}")


@main.command()
@click.option("-m", "--manifest", "manifest_opt", metavar="PATH", help="only the runs of this manifest's name")
@click.option("--reports", "report_root", type=click.Path(path_type=Path), default=None,
              help="report folder to read (default: the manifest's report.dir, else ./reports)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def runs(manifest_opt: str | None, report_root: Path | None, as_json: bool) -> None:
    """List past runs with their key metrics and gate verdicts (oldest first).

    \b
    Example:  cskd-pipeline runs -m quickstart
    """
    from pipeline.history import list_runs

    name = None
    if manifest_opt is not None:
        manifest = _load(manifest_opt)
        name, report_root = manifest.name, report_root or Path(manifest.report.dir)
    rows = list_runs(report_root or Path("reports"), name)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo("| run | name | teacher top-1 | student top-1 | gate | duration s |\n|---|---|---|---|---|---|")
    for r in rows:
        click.echo(f"| {r['run']} | {r['name']} | {r['teacher_top1']:.2f} | {r['student_top1']:.2f} | {r['gate']} | "
                   f"{r['duration_s'] if r['duration_s'] is not None else '-'} |")


@main.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--reports", "report_root", type=click.Path(path_type=Path), default=Path("reports"),
              show_default=True, help="report folder holding <name>/runs/<run id>/")
@handle_errors
def diff(run_a: str, run_b: str, report_root: Path) -> None:
    """The manifest settings and metrics that differ between two runs, as a Markdown table.

    \b
    Example:  cskd-pipeline diff 20261128T031500Z 20261128T032210Z   (a unique prefix is enough)
    """
    from pipeline.history import diff_runs, find_run

    a, b = find_run(report_root, run_a), find_run(report_root, run_b)
    click.echo(f"| setting or metric | {a['run']['id']} | {b['run']['id']} |\n|---|---|---|")
    def show(value) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    for key, left, right in diff_runs(a, b):
        click.echo(f"| `{key}` | {show(left)} | {show(right)} |")


@main.command()
@manifest_option
@handle_errors
def verify(manifest_opt: str | None) -> None:
    """Check every artifact in the store against its seal: record and files, nothing missing or extra."""
    from pipeline.core.errors import StoreError
    from pipeline.core.store import ArtifactStore

    manifest = _load(manifest_opt)
    store = ArtifactStore(manifest.store)
    ids = store.all_ids()
    problems = [p for kind, art_id in ids for p in store.problems(kind, art_id)]
    for p in problems:
        click.echo(p)
    if problems:
        raise StoreError(f"{len(problems)} problem(s) in {store.root}; `cskd-pipeline run` quarantines and "
                         f"recomputes those artifacts")
    click.echo(f"{len(ids)} artifacts in {store.root}: every record and file matches its seal")


if __name__ == "__main__":
    main()
