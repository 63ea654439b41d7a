"""``cskd-pipeline export NAME[@vN]``: a target's files from a shipped, verified bundle, with no
retraining. The files are the bundle's bytes; beside them go ``labels.txt`` and
``export_card.json`` (the source version, its seal, each file's sha256 and the target's test
metrics), so a deployment folder says where it came from."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from foundation.backends import backend
from foundation.bundle_seal import SUMS, verify_bundle
from foundation.errors import ManifestError, OutputError
from foundation.files import check_owned_files, confined, copy_owned_files, sha256_file

EXPORT_CARD = "export_card.json"
_SOURCE = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)(?:@(?P<version>v?\d+|latest))?$")


def parse_source(text: str) -> tuple[str, str]:
    """``quickstart``, ``quickstart@v1``, ``quickstart@2`` or ``quickstart@latest`` as (name, version)."""
    match = _SOURCE.match(text)
    if match is None:
        raise ManifestError(f"{text!r}: give a shipped name as NAME or NAME@vN (e.g. quickstart@v1)")
    version = match.group("version") or "latest"
    return match.group("name"), version if version == "latest" or version.startswith("v") else f"v{version}"


def check_out_folder(out: Path, protected: dict[str, Path]) -> None:
    """``--out`` inside the store, the report or the ship folders would write into what the pipeline
    seals or owns: exit 2, naming the folder."""
    resolved = out.resolve()
    for field, folder in protected.items():
        if resolved == folder.resolve() or resolved.is_relative_to(folder.resolve()):
            raise OutputError(f"--out {out}: inside {field} ({folder}), which the pipeline seals and manages; "
                              f"choose a folder outside it")


def targets_held(sums: dict[str, str]) -> list[str]:
    from foundation.backends import backends

    return [name for name, spec in backends().items() if spec.shipped and set(spec.shipped) <= set(sums)]


def export_shipped(source: str, target: str, out: Path | None, *, ship_dir: Path,
                   protected: dict[str, Path]) -> tuple[list[Path], str]:
    """Copy ``target``'s files of the shipped version ``source`` into ``out``; (files written, one
    summary line)."""
    name, version = parse_source(source)
    folder = confined(ship_dir / name, field="--ship-dir")
    bundle = folder / version
    if not bundle.is_dir():
        known = sorted(p.name for p in folder.glob("v*") if p.is_dir()) if folder.is_dir() else []
        raise ManifestError(f"{source}: no shipped version {version} of {name!r} under {ship_dir} "
                            f"(versions: {', '.join(known) or 'none'})")
    sums = verify_bundle(bundle)
    resolved_version = bundle.resolve().name
    spec = backend(target)
    if not spec.shipped or not set(spec.shipped) <= set(sums):
        raise ManifestError(f"--target {target}: {name} {resolved_version} does not hold it; it holds "
                            f"{', '.join(targets_held(sums)) or 'no exportable target'}")
    out = out if out is not None else Path("exported") / f"{name}-{resolved_version}"
    check_out_folder(out, protected)
    names = [*spec.shipped, "labels.txt", EXPORT_CARD]
    check_owned_files(out, names)  # refused before a byte is written
    report = json.loads((bundle / "report.json").read_text())  # verified above with the rest
    metrics = ((report.get("metrics") or {}).get("models") or {}).get(target) or {}
    card = {"made_by": "cskd-pipeline export", "source": {"name": name, "version": resolved_version,
                                                          "folder": str(bundle.resolve()),
                                                          "seal_sha256": sha256_file(bundle / SUMS)},
            "target": target, "files": {f: sums[f] for f in [*spec.shipped, "labels.txt"]},
            "test_metrics": {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))},
            "split": (report.get("metrics") or {}).get("split")}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / EXPORT_CARD).write_text(json.dumps(card, indent=2) + "\n")
        written = copy_owned_files(out, {**{f: bundle / f for f in [*spec.shipped, "labels.txt"]},
                                         EXPORT_CARD: Path(tmp) / EXPORT_CARD})
    top1 = metrics.get("top1")
    accuracy = f"test top-1 {top1:.2f}" if isinstance(top1, (int, float)) else "no test top-1 recorded"
    line = (f"exported {name} {resolved_version} ({target}, {accuracy}, verified against {SUMS}): "
            f"{', '.join(str(p) for p in written)}")
    return written, line
