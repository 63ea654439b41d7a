"""Ship: the bundle of a student that passed its gate (weights, every export, a model card),
built from verified input artifacts only: no data is loaded. The orchestrator
publishes the committed bundle into ``<ship.dir>/<name>/``."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from cskd.config import Strict
from foundation.artifact import Artifact
from foundation.backends import backend, backends, fastest_passing
from foundation.contracts import Added, Stage, StageContext, StageResult
from foundation.environment import environment
from foundation.errors import GateFailed
from foundation.files import sha256_file
from foundation.manifest import Manifest
from foundation.records import BundleRecord
from stagekit.bundle_io import describe_io
from stagekit.models import WEIGHTS_FILE

CARD_FILE = BundleRecord.CARD
README_FILE = "README.md"
PREDICT_SCRIPT = Path(__file__).parent / "bundle" / "predict.py"


def add_onnx_metadata(path: Path, io: dict) -> None:
    """Write the class names and the input/output spec into the ONNX file's metadata_props."""
    import onnx

    model = onnx.load(str(path))
    entries = {
        "cskd.class_names": io["class_names"],
        "cskd.input": io["input"],
        "cskd.output": io["output"],
    }
    for key, value in entries.items():
        prop = model.metadata_props.add()
        # the same bytes whatever the record's order
        prop.key, prop.value = key, json.dumps(value, sort_keys=True)
    onnx.save(model, str(path))


class ShipConfig(Strict):
    name: str
    targets: list[str]
    latency: bool
    chosen_by: str | None = Added(
        description="ship.chosen_by: what chose this student (a search), for the card"
    )


def _origin(training: Artifact) -> dict:
    """Where a trained model started (its init file, the head layers re-initialised for new
    classes) and the input normalisation inside it."""
    return {k: training.metrics[k] for k in ("init", "normalization") if k in training.metrics}


def model_card(
    name: str, artifacts: dict[str, Artifact], files: dict[str, str], chosen_by: str | None = None
) -> dict:
    validate, distill = artifacts["validate"], artifacts["distill"]
    data = {
        **validate.record.get("data", {}),
        "train_samples": distill.metrics.get("train_samples"),
        "val_samples": distill.metrics.get("val_samples"),
    }
    return {
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "student": {
            "model": distill.record["config"]["model"],
            "parameters": distill.metrics.get("parameters"),
            "loss": distill.record["config"]["loss"],
            **_origin(distill),
        },
        "teacher": {
            "model": artifacts["teacher"].record["config"]["model"],
            **_origin(artifacts["teacher"]),
        },
        "data": {k: v for k, v in data.items() if k != "class_names"},
        **describe_io(artifacts),
        "metrics": validate.metrics,
        "exports": {
            kind: {"metrics": art.metrics, "headline": art.record.get("headline")}
            for kind, art in artifacts.items()
            if kind not in ("teacher", "distill", "validate", "gate")
        },
        "gate": artifacts["gate"].metrics,
        "int8": _int8_summary(artifacts),
        "artifacts": {kind: art.id for kind, art in artifacts.items()},
        "recipe": {kind: art.record.get("config") for kind, art in artifacts.items()},
        "files": files,
        **({"chosen_by": chosen_by} if chosen_by else {}),
        "environment": environment(),
    }


def _int8_summary(artifacts: dict[str, Artifact]) -> dict | None:
    """The INT8 model's CPU class and operator choice, where the bundle has one: the figures hold
    for that class of CPU only (``export.cpu``)."""
    if "quantize" not in artifacts:
        return None
    metrics = artifacts["quantize"].metrics
    cpu = metrics.get("cpu") or {}
    return {
        "cpu_class": cpu.get("class"),
        "validated_on": cpu.get("machine"),
        "checked_with": cpu.get("checked_with"),
        "flag": cpu.get("flag"),
        "note": cpu.get("note"),
        "operators": metrics.get("operators"),
        "operators_why": (metrics.get("operators_choice") or {}).get("why"),
        "reduce_range": metrics.get("reduce_range"),
    }


def bundle_readme(card: dict) -> str:
    """The bundle's README.md: what the model is, its test metrics, its input, which file to use,
    and for INT8 the CPU class it was validated for."""
    m = card["metrics"]
    models = m.get("models", {})
    lines = [
        f"# {card['name']}: {card['student']['model']} distilled from {card['teacher']['model']}",
        "",
        *([f"Chosen by {card['chosen_by']}", ""] if card.get("chosen_by") else []),
        f"Test top-1 on {m.get('samples')} images of the {m.get('split')} split:",
        "",
        "| model | top-1 |",
        "|---|---|",
    ]
    lines += [f"| {name} | {values['top1']:.2f} |" for name, values in models.items()]
    spec = card["input"]
    lines += [
        "",
        f"Input `{spec['name']}`: {spec['dtype']} {spec['layout']} {spec['shape']}, pixels in [0, "
        f"1] (normalisation is inside the model). Output: logits over {len(card['class_names'])} "
        "classes (`labels.txt`).",
        "",
        *_which_file(card),
        "",
        "Verify the bundle before you use it: `sha256sum -c SHA256SUMS` in this folder (or "
        "`cskd-pipeline bundle verify <this folder>`) checks every file, this README, the model "
        "card and `predict.py` included, and names any file that is not listed. Run `predict.py` "
        "only from a folder that verifies: Python imports modules from the script's folder first.",
        "",
        "Classify image files: `python predict.py student.onnx image.png` (one line per image), "
        "or in Python (onnxruntime, numpy and Pillow only):",
        "",
        "```python",
        "from predict import Classifier",
        "",
        'model = Classifier("student.onnx")',
        'for result in model.predict(["image.png"]):  # paths, or uint8 arrays',
        '    print(result["label"], result["probability"])',
        "```",
        "",
    ]
    int8 = card.get("int8")
    if int8:
        lines += [
            "INT8 (`student_int8.onnx`, and `student_openvino_int8.*` where present): validated "
            f"for **{int8['cpu_class']}** CPUs, checked with {int8['checked_with']}; operators "
            f"{int8['operators']}, 7-bit weights {'on' if int8['reduce_range'] else 'off'}. A CPU "
            "of another class may compute different INT8 results.",
            "",
        ]
        if int8.get("flag"):
            lines += [f"Warning: {int8['flag']}.", ""]
    lines += ["Files (sha256):", ""] + [
        f"- `{name}` {digest}" for name, digest in card["files"].items()
    ]
    return "\n".join(lines) + "\n"


def _which_file(card: dict) -> list[str]:
    """Which file to use for which target and batch size, from the latency measurements: the
    fastest file within its accuracy budget at each batch size, then every file's p50."""
    latency = (card["exports"].get("latency") or {}).get("metrics")
    targets = [t for t in card["metrics"].get("exports", {}) if t in backends()]
    files = {t: ", ".join(f"`{name}`" for name in backend(t).shipped) for t in targets}
    if not latency:
        return ["Files by target: " + "; ".join(f"{t}: {files[t]}" for t in targets) + "."]
    batches = sorted({c["batch"] for c in latency["results"]})
    best = {
        b: fastest_passing(latency["results"], card["gate"].get("rules", []), batch=b)
        for b in batches
    }
    out = [
        "Which file: the fastest within its accuracy budget, measured on "
        f"{card['environment'].get('device', 'the machine that ran the pipeline')} "
        f"({latency['threads']} threads): "
        + "; ".join(f"batch {b}: {best[b]['backend']}" for b in batches if best[b])
        + ".",
        "",
        "| target | files | test top-1 | "
        + " | ".join(f"p50 ms, batch {b}" for b in batches)
        + " |",
        "|---|---|---|" + "---|" * len(batches),
    ]
    cells = {(c["backend"], c["batch"]): c["p50_ms"] for c in latency["results"]}
    for t in targets:
        top1 = card["metrics"]["exports"][t]["top1"]
        out.append(
            f"| {t} | {files[t]} | {top1:.2f} | "
            + " | ".join(f"{cells[(t, b)]:.3f}" if (t, b) in cells else "-" for b in batches)
            + " |"
        )
    return out


class ShipStage(Stage):
    kind = "ship"
    # 4: README.md says to verify the bundle (SHA256SUMS) before use; 3: README.md, the card's int8
    # entry
    version = 4
    Config = ShipConfig
    Record = BundleRecord  # the bundle's files, and the key a shipped version is found by

    @classmethod
    def configure(cls, manifest: Manifest) -> ShipConfig:
        return ShipConfig(
            name=manifest.name,
            targets=manifest.export.targets,
            latency=manifest.latency is not None,
            chosen_by=manifest.ship.chosen_by,
        )

    def inputs(self, config: ShipConfig) -> tuple[str, ...]:
        kinds = dict.fromkeys(backend(t).kind for t in config.targets)
        return (
            "teacher",
            "distill",
            *kinds,
            "validate",
            *(("latency",) if config.latency else ()),
            "gate",
        )

    def run(self, config: ShipConfig, ctx: StageContext) -> StageResult:
        gate = ctx.inputs["gate"]  # verified by the runner: a forged verdict never gets here
        if gate.metrics.get("passed") is not True:
            raise GateFailed(f"gate {gate.id[:12]} did not pass; nothing shipped")
        out = ctx.out_dir
        shutil.copyfile(ctx.inputs["distill"].file(WEIGHTS_FILE), out / "student.safetensors")
        io = describe_io(ctx.inputs)
        for target in config.targets:
            spec = backend(target)
            for shipped, name in spec.shipped.items():
                shutil.copyfile(ctx.inputs[spec.kind].file(name), out / shipped)
                if shipped.endswith(".onnx"):
                    add_onnx_metadata(out / shipped, io)
        (out / "labels.txt").write_text("".join(f"{name}\n" for name in io["class_names"]))
        shutil.copyfile(PREDICT_SCRIPT, out / "predict.py")
        files = {p.name: sha256_file(p) for p in sorted(out.iterdir())}
        card = model_card(config.name, ctx.inputs, files, config.chosen_by)
        (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        (out / README_FILE).write_text(bundle_readme(card))
        # What a shipped version is: its model files. A rerun whose gate or champion changed ships
        # the same models, so it keeps their version instead of making an identical new one.
        key = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        return StageResult(
            {"files": sorted([*files, CARD_FILE, README_FILE]), "bundle_key": key},
            # the report's json and html join it
            f"bundle of {len(files) + 4} files",
        )
