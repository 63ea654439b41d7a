"""The champion a new student is held to: the model ``<ship.dir>/<name>/latest`` points at, its seal
checked. The champion stage evaluates it; the gate asks only whether there is one to compare
with."""

from __future__ import annotations

from pathlib import Path

from cskd.config import Strict
from foundation.bundle_seal import verify_bundle
from foundation.contracts import Located, left_out_kinds
from foundation.errors import StoreError
from foundation.files import latest_version, sha256_file
from foundation.manifest import Manifest
from stagekit.data_section import TestData

# the bundle's FP32 ONNX model: what the new student's ONNX is compared with
CHAMPION_FILE = "student.onnx"


def champion_of(ship_folder: Path) -> tuple[str, Path] | None:
    """(version, its ONNX model) that ``latest`` points at in ``ship_folder``, or None."""
    version = latest_version(ship_folder)
    if version is None:
        return None
    try:  # the new student is held to this model: it must be the one that shipped
        verify_bundle(ship_folder / version)
    except StoreError as exc:
        raise StoreError(
            f"champion {version}: {exc} (nothing ships while latest fails its seal)"
        ) from None
    return version, ship_folder / version / CHAMPION_FILE


class ChampionConfig(Strict):
    sha256: str  # the champion file's content is its identity
    path: str = Located()
    version: str = Located()
    data: TestData


def find_champion(manifest: Manifest) -> ChampionConfig | None:
    """The champion stage's config: the shipped model this manifest's students are compared with,
    or None (``ship.promote: always``, the stage left out, or nothing shipped under this name)."""
    if manifest.ship.promote == "always" or "champion" in left_out_kinds():
        return None
    found = champion_of(Path(manifest.ship.dir) / manifest.name)
    if found is None:
        return None
    version, model = found
    return ChampionConfig(
        sha256=sha256_file(model), path=str(model), version=version, data=manifest.data.test_view()
    )
