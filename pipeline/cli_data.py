"""``cskd-pipeline shard``: an image folder written as tar shards for clusters (webdataset layout)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli_base import handle_errors, main


@main.command()
@click.option("--root", "root", required=True, type=click.Path(path_type=Path),
              help="the image folder: train/<class>/* and test/<class>/* (or val/)")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="a new folder for the shards")
@click.option("--shard-size", "shard_size", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="images per shard")
@handle_errors
def shard(root: Path, out: Path, shard_size: int) -> None:
    """Write an image folder as tar shards (webdataset layout) and print the manifest's data section.

    \b
    Example:  cskd-pipeline shard --root data/cifar10-jpeg --out data/cifar10-shards --shard-size 10000
    """
    from cskd.data.shards import write_shards

    summary = write_shards(root, out, shard_size=shard_size, log=click.echo)
    splits = summary["splits"]
    click.echo("data:\n  name: webdataset\n"
               f"  train_shards: {splits['train']['pattern']}\n  test_shards: {splits['test']['pattern']}")
