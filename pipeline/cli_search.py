"""``cskd-pipeline search``: the most accurate candidate student within a latency budget, shipped."""

from __future__ import annotations

import os

import click

from pipeline.cli_base import handle_errors, load_from_option, main, manifest_option, set_option
from pipeline.cli_study import launcher_options


@main.command()
@manifest_option
@launcher_options("candidates")
@click.option("--no-ship", is_flag=True, help="report the choice without shipping it")
@set_option
@handle_errors
def search(manifest_opt, jobs, launcher, slurm_partition, timeout_min, no_ship, overrides) -> None:
    """Distil every candidate of the manifest's search section; ship the most accurate file within the budget.

    \b
    Candidates whose untrained files miss the latency budget are dropped before they train; the rest
    are distilled from the shared teacher, exported, validated and timed like a normal run (and cached
    like one: a rerun recomputes only what is new). The chosen one ships through the normal gate.
    Writes reports/<name>/search.json and search.html (the Pareto plot) and prints the table.
    Exit 1 when no candidate meets the budget (the closest one is named).
    Examples: cskd-pipeline search -m search-cifar10
              cskd-pipeline search -m resnet8x4 -o 'search={candidates: [resnet8x4, wrn_16_2], budget: {latency: {batch: 1, max_p90_ms: 5}}}'
              cskd-pipeline search -m search-cifar10 --launcher slurm --jobs 8
    """
    from pipeline.search import SearchRequest, run_search
    from pipeline.search_page import markdown

    manifest = load_from_option(manifest_opt, overrides)
    request = SearchRequest(jobs=jobs, launcher=launcher, ship=not no_ship,
                            slurm={"slurm_partition": slurm_partition, "timeout_min": timeout_min})
    document = run_search(manifest, request, echo=lambda line: click.echo(line, err=True))
    click.echo(markdown(document))
    folder = os.path.relpath(os.path.join(manifest.report.dir, manifest.name))
    shipped = f"; shipped {document['shipped']}" if document["shipped"] else ""
    click.echo(f"\nsearch: {folder}/search.json, {folder}/search.html ({document['wall_s']:.0f} s){shipped}")
