"""Ship: copy the passing model, its ONNX file and a model card into the output folder.

The bundle is assembled in a temporary sibling folder and renamed into place,
so the output folder never holds a half-written bundle.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from pipeline.contracts import DataProvider, dump
from pipeline.environment import environment
from pipeline.manifest import Manifest
from pipeline.store import Artifact, file_sha256
from stages.export import FP16_FILE, ONNX_FILE
from stages.models import WEIGHTS_FILE
from stages.quantize import INT8_FILE
from stages.tensorrt import ENGINE_FILE, ENGINE_META_FILE

CARD_FILE = "model_card.json"
# shipped name -> (artifact kind, file)
SHIPPED_FILES = {"student.onnx": ("export", ONNX_FILE), "student_fp16.onnx": ("export_fp16", FP16_FILE),
                 "student_int8.onnx": ("quantize", INT8_FILE), "student.engine": ("tensorrt", ENGINE_FILE),
                 "student.json": ("tensorrt", ENGINE_META_FILE)}


def model_card(manifest: Manifest, artifacts: dict[str, Artifact], data: dict, files: dict[str, str]) -> dict:
    validate = artifacts["validate"].metrics
    return {
        "name": manifest.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "student": {"model": manifest.student.model, "parameters": artifacts["distill"].metrics.get("parameters"),
                    "loss": dump(manifest.student.loss)},
        "teacher": {"model": manifest.teacher.model},
        "data": {k: v for k, v in data.items() if k != "class_names"},
        "input": artifacts["export"].record.get("input"),
        "metrics": validate,
        "exports": {kind: {"metrics": artifacts[kind].metrics, "headline": artifacts[kind].record.get("headline")}
                    for kind in ("export", "export_fp16", "quantize", "tensorrt", "latency") if kind in artifacts},
        "gate": artifacts["gate"].metrics,
        "artifacts": {kind: art.id for kind, art in artifacts.items()},
        "files": files,
        "environment": environment(),
        "manifest": dump(manifest),
    }


def ship(manifest: Manifest, artifacts: dict[str, Artifact], data: DataProvider,
         report_dir: Path | None = None) -> Path:
    final = Path(manifest.ship.dir) / manifest.name
    final.parent.mkdir(parents=True, exist_ok=True)
    # Two runs shipping the same name take turns: the swap below is two renames.
    with open(final.parent / f".{manifest.name}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        return _ship_locked(manifest, artifacts, data, final, report_dir)


def _ship_locked(manifest: Manifest, artifacts: dict[str, Artifact], data: DataProvider, final: Path,
                 report_dir: Path | None) -> Path:
    tmp = final.parent / f".{manifest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        shutil.copy2(artifacts["distill"].file(WEIGHTS_FILE), tmp / "student.safetensors")
        for target, (kind, name) in SHIPPED_FILES.items():
            if kind in artifacts:
                shutil.copy2(artifacts[kind].file(name), tmp / target)
        for name in ("report.json", "report.html"):
            if report_dir is not None and (report_dir / name).is_file():
                shutil.copy2(report_dir / name, tmp / name)
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        card = model_card(manifest, artifacts, data.describe(), files)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        old = None
        if final.exists():
            old = final.parent / f".{manifest.name}.old-{uuid.uuid4().hex[:6]}"
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
