"""Export: the student as ONNX (dynamic batch, full onnx.checker pass), checked for
parity with PyTorch on real validation images. Registers the ``onnx`` target."""

from __future__ import annotations

import shutil

import numpy as np
import torch
from pydantic import Field

from cskd.config import Strict
from cskd.evaluate import predict_logits
from exports.onnx_export import export_onnx
from exports.ort_runtime import create_session, run_batched
from foundation.backends import Backend, register_backend
from foundation.contracts import Stage, StageContext, StageResult
from foundation.manifest import Manifest
from foundation.sections import EXPORT_SETTINGS
from stagekit.data import held_out
from stagekit.data_section import TrainData
from stagekit.models import WEIGHTS_FILE, load_network
from stagekit.onnx_files import ONNX_FILE, onnx_loader

EXPORT_SETTINGS.register(
    "opset",
    int,
    Field(
        18,
        ge=17,
        le=23,
        description="ONNX opset (the torch.export-based exporter writes 18 natively)",
    ),
)
PARITY_SAMPLES = 512


def parity(model_logits: np.ndarray, reference: np.ndarray) -> dict:
    """Largest absolute logit difference and top-1 agreement (percent) against a reference."""
    return {
        "max_logit_diff": float(np.abs(model_logits - reference).max()),
        "top1_agreement": float((model_logits.argmax(1) == reference.argmax(1)).mean()) * 100.0,
    }


class ExportConfig(Strict):
    model: str
    opset: int
    data: TrainData  # the val split, for the parity check


class ExportStage(Stage):
    kind = "export"
    version = 3
    Config = ExportConfig
    requires = ("distill",)

    @classmethod
    def configure(cls, manifest: Manifest) -> ExportConfig:
        return ExportConfig(
            model=manifest.student.model,
            opset=manifest.export.opset,
            data=manifest.data.train_view(),
        )

    def run(self, config: ExportConfig, ctx: StageContext) -> StageResult:
        source = config.data.source
        model = load_network(config.model, source, ctx.inputs["distill"].file(WEIGHTS_FILE))
        val, split_name = held_out(config.data)
        shape = list(val.sample_shape)
        path = export_onnx(
            model, sample=torch.zeros(2, *shape), path=ctx.out_dir / ONNX_FILE, opset=config.opset
        )
        # Parity on real validation images (the test split stays untouched until validate).
        images = val.head(PARITY_SAMPLES)
        check = parity(
            run_batched(create_session(path), images.numpy()), predict_logits(model, images).numpy()
        )
        metrics = {
            "onnx_bytes": path.stat().st_size,
            "opset": config.opset,
            "parity_split": split_name,
            "parity_samples": len(images),
            **{f"parity_{k}": v for k, v in check.items()},
        }
        contract = {
            "name": "images",
            "layout": "NCHW",
            "dtype": "float32",
            "range": [0.0, 1.0],
            "shape": ["batch", *shape],
        }
        return StageResult(
            metrics,
            f"{path.stat().st_size / 1024:.0f} KiB, opset {config.opset}, "
            f"{split_name} parity max |diff| {check['max_logit_diff']:.1e}",
            extra={"input": contract},
        )


register_backend(
    Backend(
        "onnx",
        kind="export",
        file=ONNX_FILE,
        load=onnx_loader("export", ONNX_FILE),
        shipped={"student.onnx": ONNX_FILE},
        description="ONNX FP32, ONNX Runtime CPU",
        probe=lambda files, out, export, images: shutil.copyfile(files["onnx"], out),
    )
)
