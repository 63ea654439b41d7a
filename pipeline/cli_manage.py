"""The commands that read or tidy what runs leave behind: runs, diff, verify, gate, gc, init,
plus schema and targets. They register on ``pipeline.cli.main``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from foundation.errors import ManifestError
from pipeline.cli_base import (
    EXAMPLES,
    handle_errors,
    load_from_option,
    main,
    manifest_option,
    registered_backends,
    store_from_option,
)

DIGITS_EXAMPLE = "digits"  # `init --example digits`: an image folder and its manifest, not a file of examples/


@main.command()
@handle_errors
def schema() -> None:
    """Print the manifest's JSON schema.

    \b
    Example:  cskd-pipeline schema > manifest.schema.json   (for editor completion)
    """
    import stages  # noqa: F401 - registers every back-end and the export settings they own
    from pipeline.schema import manifest_schema

    click.echo(json.dumps(manifest_schema(), indent=2))



@main.command()
def targets() -> None:
    """List the export targets (registered back-ends) and what each is.

    \b
    Example:  cskd-pipeline targets
    """
    for name, spec in registered_backends().items():
        missing = spec.missing()
        where = "  (targets: auto takes it on a GPU only)" if spec.auto_device == "cuda" and not missing else ""
        click.echo(f"{name:<14} {spec.description}{where}" + (f"  [missing: {missing}]" if missing else ""))



@main.command()
@click.option("--load", "try_load", is_flag=True, help="also load each one: which fail, and why")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def plugins(try_load: bool, as_json: bool) -> None:
    """List the installed plug-ins: the models, losses, back-ends, stages and serving engines
    that other distributions add through entry points (cskd_pipeline.models, ...), and where
    they come from.

    \b
    Example:  cskd-pipeline plugins --load
    """
    from foundation import plugins as registry

    rows = []
    for plugin in registry.installed():
        row = {"group": plugin.group, "entry_point_group": registry.GROUPS[plugin.group],
               "name": plugin.name, "object": plugin.value, "distribution": plugin.distribution,
               "location": plugin.location}
        if try_load:
            try:
                registry.load(plugin.group, plugin.name)
                row["loads"] = "ok"
            except registry.PluginError as exc:
                row["loads"] = str(exc)
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        groups = ", ".join(registry.GROUPS.values())
        click.echo(f"no plug-ins installed (entry point groups: {groups})")
    for row in rows:
        status = f"  [{row['loads']}]" if try_load else ""
        click.echo(f"{row['group']:<8} {row['name']:<16} {row['object']}  from {row['distribution']} "
                   f"({row['location']}){status}")
    if try_load and any(row["loads"] != "ok" for row in rows):
        raise SystemExit(3)


@main.command()
@manifest_option
@click.option("--baseline", "baseline_path", required=True, type=click.Path(path_type=Path),
              help="committed baseline JSON (metrics, tolerances, directions)")
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="report.json of a run (default: the manifest's report folder)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def gate(manifest_opt: str | None, baseline_path: Path, report_path: Path | None, as_json: bool) -> None:
    """CI regression gate: compare a run's report with a baseline; exit 1 on a regression.

    \b
    Example:  cskd-pipeline gate --baseline baselines/quickstart.json
    """
    from foundation.errors import GateFailed
    from pipeline.regression import compare, load_baseline, load_json, markdown

    baseline = load_baseline(baseline_path)
    if report_path is None:
        manifest = load_from_option(manifest_opt)
        report_path = Path(manifest.report.dir) / manifest.name / "latest" / "report.json"
    rows = compare(baseline, load_json(report_path, "report (run the pipeline first)"), report_path)
    click.echo(json.dumps(rows, indent=2) if as_json else markdown(rows, report_path=report_path,
                                                                    baseline_path=baseline_path))
    failed = [r["metric"] for r in rows if not r["passed"]]
    if failed:
        raise GateFailed(f"regression in {', '.join(failed)} against {baseline_path}")



@main.command()
@manifest_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def verify(manifest_opt: str | None, as_json: bool) -> None:
    """Check every artifact in the store against its seal: record and files, nothing missing or extra.

    \b
    Example:  cskd-pipeline verify --json
    """
    from foundation.errors import StoreError
    from foundation.store import ArtifactStore

    manifest = load_from_option(manifest_opt)
    store = ArtifactStore(manifest.store)
    ids = store.all_ids()
    problems = [p for kind, art_id in ids for p in store.problems(kind, art_id)]
    if as_json:
        click.echo(json.dumps({"store": str(store.root), "artifacts": len(ids), "problems": problems}, indent=2))
    for p in [] if as_json else problems:
        click.echo(p)
    if problems:
        raise StoreError(f"{len(problems)} problem(s) in {store.root}; `cskd-pipeline run` quarantines and "
                         f"recomputes those artifacts")
    if not as_json:
        click.echo(f"{len(ids)} artifacts in {store.root}: every record and file matches its seal")


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
        manifest = load_from_option(manifest_opt)
        name, report_root = manifest.name, report_root or Path(manifest.report.dir)
    rows = list_runs(report_root or Path("reports"), name, warn=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo("| run | name | overrides | teacher top-1 | student top-1 | INT8 top-1 | gate | shipped | duration s |\n"
               "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        shipped = f"{r['shipped']}{' (latest)' if r['became_latest'] else ''}" if r["shipped"] else "-"
        int8 = f"{r['int8_top1']:.2f}" if r["int8_top1"] is not None else "-"
        overrides = " ".join(f"`{o}`" for o in r["overrides"]) or "-"
        click.echo(f"| {r['run']} | {r['name']} | {overrides} | {r['teacher_top1']:.2f} | {r['student_top1']:.2f} | "
                   f"{int8} | {r['gate']} | {shipped} | {r['duration_s'] if r['duration_s'] is not None else '-'} |")


@main.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--reports", "report_root", type=click.Path(path_type=Path), default=Path("reports"),
              show_default=True, help="report folder holding <name>/runs/<run id>/")
@click.option("--all", "everything", is_flag=True,
              help="every row: unchanged ones and latencies that moved within their noise too")
@handle_errors
def diff(run_a: str, run_b: str, report_root: Path, everything: bool) -> None:
    """The manifest settings and metrics that differ between two runs, as a Markdown table with the
    change. A latency that moved less than the spread of its timing rounds is noise, not a change:
    it is shown only with --all, marked as such.

    \b
    Example:  cskd-pipeline diff 20261128T031500 20261128T032210   (a unique prefix is enough)
    """
    from pipeline.history import diff_runs, find_run

    a, b = find_run(report_root, run_a), find_run(report_root, run_b)
    click.echo(f"| setting or metric | {a['run']['id']} | {b['run']['id']} | change |\n|---|---|---|---|")

    def show(value) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    for row in diff_runs(a, b, everything=everything):
        change = row.change + (" (within noise)" if row.noise else "")
        click.echo(f"| `{row.key}` | {show(row.left)} | {show(row.right)} | {change or 'unchanged'} |")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=Path("."))
@click.option("--example", metavar="NAME", is_flag=False, flag_value=DIGITS_EXAMPLE, default=None,
              help="start from an example instead of the starter: a ready manifest by name (quickstart, "
                   "resnet8x4, ...: each of manifests/), or `digits` (the default for a bare --example): an "
                   "image folder to try it on (the digits as PNG files in DIRECTORY/images/train|test/<class>/) "
                   "with the manifest reading it, no download needed")
@handle_errors
def init(directory: Path, example: str | None) -> None:
    """Write a commented starter manifest, DIRECTORY/manifest.yaml, that runs as written.

    \b
    Examples: cskd-pipeline init my-project && cd my-project && cskd-pipeline run
              cskd-pipeline init my-first --example digits && cd my-first && cskd-pipeline run
              cskd-pipeline init cifar --example resnet8x4   (a ready manifest, to edit)
    """
    from foundation.files import write_new_file

    starter = (Path(__file__).parent / "starter.yaml").read_text()
    target = directory / "manifest.yaml"
    if example == DIGITS_EXAMPLE:
        from pipeline.example_folder import write_example

        target, counts = write_example(directory, starter)
        click.echo(f"wrote {directory / 'images'} ({counts['train']} training and {counts['test']} test PNG "
                   f"images, a folder per class)")
    else:
        text = starter if example is None else example_manifest(example, directory).read_text()
        write_new_file(target, text, what="manifest")
    next_step = "cskd-pipeline run" if directory.resolve() == Path.cwd().resolve() else \
        f"cd {directory} && cskd-pipeline run"
    click.echo(f"wrote {target}; next: {next_step}")


def example_manifest(name: str, directory: Path) -> Path:
    """The ready manifest ``name`` installed with the package; a one-line error listing them if none
    is called that (``init --example my-first``, the order of earlier versions, lands here)."""
    path = EXAMPLES / f"{name.removesuffix('.yaml')}.yaml"
    if path.is_file():
        return path
    known = ", ".join([DIGITS_EXAMPLE, *sorted(p.stem for p in EXAMPLES.glob("*.yaml"))])
    raise ManifestError(f"init --example: no example named {name!r} (examples: {known}); the folder comes "
                        f"first: cskd-pipeline init {name if directory == Path('.') else directory} --example NAME")


@main.command()
@manifest_option
@click.option("--yes", "really", is_flag=True, help="remove; without it, only list what would go")
@click.option("--drop-failed", is_flag=True, help="also remove what only the latest, failed run of a manifest used")
@handle_errors
def gc(manifest_opt: str | None, really: bool, drop_failed: bool) -> None:
    """Remove what no shipped version, latest passing run, latest run or live run of any manifest
    in the store uses (from the store's own index of runs); report the space reclaimed.

    \b
    Examples: cskd-pipeline gc          (dry run: what would be removed)
              cskd-pipeline gc --yes
    """
    from foundation.store import ArtifactStore
    from pipeline.gc import collect, plan_gc

    store = ArtifactStore(store_from_option(manifest_opt))  # the store is all gc reads: no schema, no torch
    plan = plan_gc(store, drop_failed=drop_failed)
    reclaimed = collect(store, plan, really=really, echo=click.echo)
    reasons = Counter(why.split(" (")[0] for why in plan.keep.values())
    kept = ", ".join(f"{n} for the {why}" for why, n in sorted(reasons.items()))
    gone = len(plan.remove) - len(plan.busy)
    click.echo(f"kept {len(plan.keep)} artifacts ({kept or 'none'}){f', {len(plan.busy)} in use' if plan.busy else ''}; "
               f"{'removed' if really else 'would remove'} {gone} entries, {reclaimed / 2**20:.1f} MiB"
               f"{'' if really else ': rerun with --yes'}")
