"""``promote``, ``rollback``, ``releases repair``, ``bundle verify`` and ``track status``: what
happens to shipped versions after the gate (``pipeline.releases``, ``foundation.bundle_seal``,
``pipeline.registry``)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli_base import handle_errors, load_from_option, main, manifest_option

ship_dir_option = click.option("--ship-dir", type=click.Path(path_type=Path), default=Path("shipped"),
                               show_default=True, help="the folder holding <name>/v<N>/ (the manifest's ship.dir)")

def _ship_folder(name: str, ship_dir: Path) -> Path:
    from foundation.files import confined

    return confined(ship_dir / name, field="--ship-dir")


@main.command()
@click.argument("name")
@click.argument("version")
@ship_dir_option
@manifest_option
@handle_errors
def promote(name: str, version: str, ship_dir: Path, manifest_opt: str | None) -> None:
    """Make a shipped version the champion: move NAME's latest to VERSION (v2 or 2), and record it.

    \b
    Example:  cskd-pipeline promote quickstart v2
    """
    from pipeline.releases import promote as move

    folder = _ship_folder(name, ship_dir)
    before, after, moved = move(folder, version)
    click.echo(f"{name}: latest {before} -> {after}" if moved else f"{name}: {after} is latest already")
    if moved:
        _follow_alias(manifest_opt, name, folder, after)


@main.command()
@click.argument("name")
@ship_dir_option
@manifest_option
@handle_errors
def rollback(name: str, ship_dir: Path, manifest_opt: str | None) -> None:
    """Move NAME's latest back to the champion before the current one, and record it.

    \b
    Example:  cskd-pipeline rollback quickstart
    """
    from pipeline.releases import rollback as back

    folder = _ship_folder(name, ship_dir)
    before, after = back(folder)
    click.echo(f"{name}: latest {before} -> {after}")
    _follow_alias(manifest_opt, name, folder, after)


def _follow_alias(manifest_opt: str | None, name: str, folder: Path, version: str) -> None:
    """With MLflow tracking (-m's, else the one the ship folder recorded, else MLFLOW_TRACKING_URI):
    the registered model's alias ``champion`` follows latest."""
    from pipeline.registry import set_champion

    manifest = load_from_option(manifest_opt) if manifest_opt is not None else None
    set_champion(manifest, name, folder, version, echo=click.echo)


@main.group()
def track() -> None:
    """The model registry against the ship folder.

    \b
    Example:  cskd-pipeline track status quickstart
    """


@track.command("status")
@click.argument("name")
@ship_dir_option
@manifest_option
@handle_errors
def track_status(name: str, ship_dir: Path, manifest_opt: str | None) -> None:
    """Whether MLflow's alias 'champion' points at the version NAME's latest points at (exit 1 if not),
    and which shipped versions are not registered.

    \b
    Example:  cskd-pipeline track status quickstart
    """
    from pipeline.registry import status

    manifest = load_from_option(manifest_opt) if manifest_opt is not None else None
    if status(manifest, name, _ship_folder(name, ship_dir), echo=click.echo) is False:
        raise SystemExit(1)


@main.group()
def bundle() -> None:
    """Shipped bundles: check one against its seal (SHA256SUMS).

    \b
    Example:  cskd-pipeline bundle verify shipped/quickstart/v1
    """


@main.group()
def releases() -> None:
    """The release trail of a shipped name (releases.jsonl).

    \b
    Example:  cskd-pipeline releases repair quickstart
    """


@releases.command("repair")
@click.argument("name")
@ship_dir_option
@handle_errors
def releases_repair(name: str, ship_dir: Path) -> None:
    """Set the damaged lines of NAME's releases.jsonl (torn, not JSON, not a move) aside in a file of
    their own, keep every whole line, and record the repair in the trail. Nothing is deleted.

    \b
    Example:  cskd-pipeline releases repair quickstart
    """
    from pipeline.releases import RELEASES, repair_releases

    folder = _ship_folder(name, ship_dir)
    damaged, aside = repair_releases(folder)
    if not damaged:
        click.echo(f"{folder / RELEASES}: every line is a whole move; nothing to repair")
        return
    click.echo(f"{folder / RELEASES}: set aside {len(damaged)} damaged line(s) "
               f"({', '.join(map(str, damaged))}) in {aside}; the repair is recorded")


@bundle.command("verify")
@click.argument("directory", type=click.Path(path_type=Path))
@handle_errors
def bundle_verify(directory: Path) -> None:
    """Check every file of a bundle against its seal, SHA256SUMS (exit 4 naming a changed, missing or
    unlisted file). The seal lists every file, the model card, README.md, the report and predict.py
    included; `sha256sum -c SHA256SUMS` in the folder checks the same digests.

    \b
    Example:  cskd-pipeline bundle verify shipped/quickstart/v1
    """
    from foundation.bundle_seal import SUMS, verify_bundle

    files = verify_bundle(directory)
    click.echo(f"{directory}: {len(files)} files match {SUMS} (every file in the bundle, the model card included)")
