"""``cskd-pipeline study``: compare distillation losses on a manifest over seeds and batch sizes."""

from __future__ import annotations

import os

import click

from foundation.errors import ManifestError
from pipeline.cli_base import handle_errors, load_from_option, main, manifest_option, set_option


def launcher_options(what: str):
    """--jobs, --launcher, --slurm-partition and --timeout-min: where the ``what`` (study cells,
    search candidates) run; shared by `study` and `search`."""
    def decorate(command):
        for option in reversed([
            click.option("--jobs", type=click.IntRange(1, 1024), default=1, show_default=True,
                         help=f"{what} at a time: local processes (one per GPU on a GPU machine), or Slurm jobs "
                              f"at once"),
            click.option("--launcher", type=click.Choice(["local", "slurm", "submitit-local"]), default="local",
                         show_default=True, help="local processes, Slurm jobs through submitit (extra [cluster]), "
                                                 "or submitit's local executor (the Slurm code path on this machine)"),
            click.option("--slurm-partition", default=None, help="Slurm partition for --launcher slurm"),
            click.option("--timeout-min", type=click.IntRange(1, 100_000), default=None,
                         help=f"time limit of one job of the {what}")]):
            command = option(command)
        return command
    return decorate


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ManifestError(f"{option}: {text!r} is not a comma-separated list of integers, e.g. 64,256") from None
    if not values or min(values) < 1:
        raise ManifestError(f"{option}: give positive integers, e.g. 64,256")
    return sorted(set(values), key=values.index)


@main.command()
@manifest_option
@click.option("--losses", default=None, metavar="LIST",
              help="losses to compare: ce, kd, dkd, dist, cskd-core, cskd-paper, or a variant "
                   "kind:key=value,key=value (e.g. kd:temperature=2); NAME@RECIPE trains that loss with a "
                   "published recipe (mdistiller: 240 epochs, lr 0.05; cskd: 480 epochs, lr 0.025)  "
                   "[default: kd,cskd-core]")
@click.option("--ablate", type=click.Choice(["cskd"]), default=None,
              help="a named set of arms in place of --losses, each isolating one part of the method: cskd = kd, "
                   "kd-ce1 (kd at cskd-core's label weight), cskd-fixed-t (CSWT off), cskd-core, cskd-paper; "
                   "the study reports each neighbouring pair's paired difference")
@click.option("--recipe", type=click.Choice(["shared", "own"]), default="shared", show_default=True,
              help="shared: every loss trains with the manifest's student.train; own: each with its published "
                   "recipe (kd, dkd, dist, ce: mdistiller; cskd: the authors'), unless NAME@RECIPE says otherwise")
@click.option("--seeds", type=click.IntRange(1, 1000), default=3, show_default=True,
              help="seeds 0..N-1 per loss and batch size; cells of one seed are paired")
@click.option("--seeds-for", default=None, metavar="LABEL=N,...",
              help="another seed count for the arms named, e.g. cskd-paper=3 (the others keep --seeds)")
@click.option("--batch-sizes", default=None, metavar="LIST",
              help="student batch sizes, e.g. 64,256 (default: the manifest's)")
@click.option("--reference", default="kd", show_default=True, help="the loss every other is paired against")
@launcher_options("cells")
@set_option
@handle_errors
def study(manifest_opt, losses, ablate, recipe, seeds, seeds_for, batch_sizes, reference, jobs, launcher, slurm_partition, timeout_min,
          overrides) -> None:
    """Compare losses on this manifest: every loss x batch size x seed, paired statistics.

    \b
    Writes reports/<name>/study.json and study.html and prints the tables.
    Every cell is cached; rerunning (or resuming an interrupted study) reuses them.
    Examples: cskd-pipeline study -m quickstart --losses ce,kd,cskd-core --seeds 5
              cskd-pipeline study -m resnet8x4 --losses kd,dkd,cskd-paper --seeds 3 --jobs 8
              cskd-pipeline study -m resnet8x4 --losses kd,cskd-paper --recipe own   (published recipes)
              cskd-pipeline study -m cifar10-cpu --ablate cskd --seeds 5 --seeds-for cskd-paper=3
              cskd-pipeline study -m resnet8x4 --launcher slurm --jobs 32 --slurm-partition gpu
    """
    from pipeline.study import (
        StudyRequest,
        ablation,
        markdown,
        parse_losses,
        run_study,
        with_recipes,
        with_seeds,
    )

    if ablate and losses:
        raise ManifestError("--ablate names its own arms; give --ablate or --losses, not both")
    manifest = load_from_option(manifest_opt, overrides)
    specs, contrasts = ablation(ablate) if ablate else (parse_losses(losses or "kd,cskd-core"), [])
    specs = with_seeds(with_recipes(specs, recipe), seeds_for)
    sizes = _int_list(batch_sizes, "--batch-sizes") if batch_sizes else [manifest.student.train.batch_size]
    request = StudyRequest(losses=specs, seeds=seeds, batch_sizes=sizes, reference=reference, jobs=jobs,
                           contrasts=tuple(contrasts),
                           launcher=launcher, slurm={"slurm_partition": slurm_partition, "timeout_min": timeout_min})
    result = run_study(manifest, request, echo=lambda line: click.echo(line, err=True))
    click.echo(markdown(result))
    folder = os.path.relpath(os.path.join(manifest.report.dir, manifest.name))
    click.echo(f"\nstudy: {folder}/study.json, {folder}/study.html ({result['wall_s']:.0f} s)")
