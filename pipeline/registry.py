"""The MLflow Model Registry follows the ship folder: each shipped version registered once, tagged
with its bundle version; the alias ``champion`` on the version ``latest`` points at.

The ship folder remembers where it is tracked (``tracking.json``, written when a run ships
with tracking on), so ``promote`` and ``rollback`` move the alias without ``-m``. A version
shipped before tracking was on is registered at the next tracked ship (``backfill``), each
bundle verified first. ``status`` says whether the alias and ``latest`` agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from foundation.bundle_seal import verify_bundle
from foundation.errors import StoreError
from foundation.files import latest_version
from pipeline.mlflow_access import mlflow_or_warn, quiet_output, tracking_uri, warn

CHAMPION_ALIAS = "champion"
BUNDLE_VERSION_TAG = "cskd.bundle_version"
TRACKING_RECORD = "tracking.json"  # in shipped/<name>/: the tracking URI this name ships to


def remember_tracking(ship_folder: Path, uri: str) -> None:
    """Record in the ship folder where its versions are registered (atomic; the folder is ours)."""
    tmp = ship_folder / f".{TRACKING_RECORD}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"made_by": "cskd-pipeline", "mlflow_uri": uri}, indent=2) + "\n")
    os.replace(tmp, ship_folder / TRACKING_RECORD)


def remembered_uri(ship_folder: Path) -> str | None:
    try:
        record = json.loads((ship_folder / TRACKING_RECORD).read_text())
    except (OSError, ValueError):
        return None
    uri = record.get("mlflow_uri") if isinstance(record, dict) else None
    return uri if isinstance(uri, str) and uri else None


def _tag_of(version) -> str | None:
    return version.tags.get(BUNDLE_VERSION_TAG)


def register(mlflow, name: str, bundle_dir: Path, *, tags: dict, latest: bool) -> str:
    """The shipped ONNX student in the Model Registry (ONNX flavour, with its signature), described
    and tagged with its bundle version; the alias ``champion`` follows ``latest``. The caller has
    verified the bundle. Returns the registered version."""
    import numpy as np
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    bundle_version = bundle_dir.resolve().name
    model = onnx.load(str(bundle_dir / "student.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    spec, classes = json.loads(meta["cskd.input"]), len(json.loads(meta["cskd.class_names"]))
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *spec["shape"][1:]), spec["name"])]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes), "logits")]))
    # The ONNX flavour's own requirements (onnx, onnxruntime, pinned to what is installed; MLflow adds
    # itself): inferring them instead imports the model in a subprocess, 3-4 s per registration, to
    # arrive at the same list for an ONNX file.
    info = mlflow.onnx.log_model(model, name="model", signature=signature, registered_model_name=name,
                                 pip_requirements=mlflow.onnx.get_default_pip_requirements())
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    client.update_registered_model(name, description=f"Students distilled by cskd-pipeline from manifest {name!r}; "
                                                     f"the alias '{CHAMPION_ALIAS}' is the shipped latest.")
    client.set_registered_model_tag(name, "cskd.manifest", name)
    client.update_model_version(name, version, description=f"bundle {bundle_version} of {name} ({bundle_dir})")
    for key, value in {**tags, BUNDLE_VERSION_TAG: bundle_version, "cskd.promoted": str(latest)}.items():
        client.set_model_version_tag(name, version, key, value)
    if latest:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return version


def backfill(mlflow, name: str, ship_folder: Path, *, echo: Callable[[str], None]) -> list[str]:
    """Register every shipped version of ``name`` the registry lacks (shipped before tracking was on),
    each verified first; a version that fails its seal is left out with one line. Returns the bundle
    versions registered."""
    client = mlflow.MlflowClient()
    known = {_tag_of(v) for v in client.search_model_versions(f"name = '{name}'")}
    done = []
    for folder in sorted(ship_folder.glob("v*"), key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else 0):
        if not folder.is_dir() or folder.is_symlink() or folder.name in known or not folder.name[1:].isdigit():
            continue
        try:
            verify_bundle(folder)
        except StoreError as exc:
            echo(f"warning: {folder.name} of {name} not registered: {exc}")
            continue
        register(mlflow, name, folder, tags={"cskd.manifest": name, "cskd.registered": "backfill"}, latest=False)
        done.append(folder.name)
    return done


def _client(uri: str, echo: Callable[[str], None]):
    mlflow = mlflow_or_warn(uri, echo)
    return None if mlflow is None else mlflow.MlflowClient(tracking_uri=uri)


def _registered(client, name: str) -> dict[str, str]:
    """{bundle version: newest registered model version tagged with it}."""
    found: dict[str, str] = {}
    for v in client.search_model_versions(f"name = '{name}'"):
        tag = _tag_of(v)
        if tag and int(v.version) > int(found.get(tag, 0)):
            found[tag] = v.version
    return found


def uri_for(manifest, ship_folder: Path) -> str | None:
    """Where ``name`` is tracked: the manifest's (``-m``), else what its ship folder recorded, else
    MLFLOW_TRACKING_URI."""
    section = manifest.tracking.mlflow if manifest is not None else None
    return ((section.uri if section is not None and section.uri else None) or remembered_uri(ship_folder)
            or tracking_uri(None))


def set_champion(manifest, name: str, ship_folder: Path, bundle_version: str, *,
                 echo: Callable[[str], None]) -> None:
    """After ``promote`` or ``rollback``: the alias ``champion`` moves to the registered version of
    ``bundle_version``. Nothing to do without tracking; a failure is one visible warning."""
    uri = uri_for(manifest, ship_folder)
    if uri is None:
        return
    notes: list[str] = []
    try:
        with quiet_output():
            client = _client(uri, notes.append)
            version = _registered(client, name).get(bundle_version) if client is not None else None
            if client is not None and version is None:
                notes.append(f"warning: no registered version of {name} is tagged {BUNDLE_VERSION_TAG}={bundle_version} "
                             f"at {uri}; the alias '{CHAMPION_ALIAS}' was not moved (the next tracked run of {name} "
                             f"registers it)")
            elif client is not None:
                client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
                client.set_model_version_tag(name, version, "cskd.promoted", "True")
                notes.append(f"{name}: MLflow alias '{CHAMPION_ALIAS}' -> model version {version} ({bundle_version})")
    except Exception as exc:  # noqa: BLE001 - as for runs: one line, the move on disk stands
        warn(notes.append, uri, exc)
    for line in notes:
        echo(line)


def status(manifest, name: str, ship_folder: Path, *, echo: Callable[[str], None]) -> bool | None:
    """Print whether the registry's alias and ``latest`` agree; True, False, or None (no tracking)."""
    uri = uri_for(manifest, ship_folder)
    latest = latest_version(ship_folder)
    if uri is None:
        echo(f"{name}: latest {latest}; no MLflow tracking recorded for it (tracking.json, -m, MLFLOW_TRACKING_URI)")
        return None
    notes: list[str] = []
    try:
        with quiet_output():
            client = _client(uri, notes.append)
            registered = _registered(client, name) if client is not None else {}
            try:
                alias = client.get_model_version_by_alias(name, CHAMPION_ALIAS) if client is not None else None
            except Exception:  # noqa: BLE001 - MLflow raises its own error for a missing alias or model
                alias = None
    except Exception as exc:  # noqa: BLE001 - a server that is down: one line
        warn(echo, uri, exc)
        return None
    for line in notes:
        echo(line)
    if client is None:
        return None
    at = _tag_of(alias) if alias is not None else None
    missing = sorted({p.name for p in ship_folder.glob("v*") if p.is_dir()} - set(registered))
    agree = at == latest
    echo(f"{name}: latest {latest} on disk; MLflow alias '{CHAMPION_ALIAS}' at {uri} -> "
         f"{f'model version {alias.version} ({at})' if alias is not None else 'none'}: "
         f"{'in step' if agree else 'DISAGREE: `cskd-pipeline promote ' + name + ' ' + str(latest) + '` moves it'}"
         + (f"; not registered: {', '.join(missing)}" if missing else ""))
    return agree
