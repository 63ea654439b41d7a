"""Champion: the model that ``<ship.dir>/<name>/latest`` points at, evaluated on the current test
split with ONNX Runtime, so the gate can hold a new student to "not worse than what it replaces".

Its id is the champion file's sha256 and the test data's fingerprint: it reruns exactly when
either changes, not for every new student. The first ship of a name has no champion (the stage
is not planned), and neither has ``ship.promote: always``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cskd.checkpoint import save_tensors
from exports.ort_runtime import create_session, run_batched
from foundation.contracts import Stage, StageContext, StageResult
from foundation.errors import ManifestError
from foundation.files import sha256_file
from foundation.manifest import Manifest
from foundation.records import ChampionRecord
from stagekit.champion_file import ChampionConfig, find_champion
from stagekit.data import describe, test_split


class ChampionStage(Stage):
    kind = "champion"
    version = 1
    Config = ChampionConfig
    Record = ChampionRecord  # comparable, version, top1; the champion's logits in PREDICTIONS

    @classmethod
    def configure(cls, manifest: Manifest) -> ChampionConfig | None:
        return find_champion(manifest)

    def inputs(self, config: ChampionConfig) -> tuple[str, ...]:
        return ()

    def redundant(self, config: ChampionConfig, ids: dict[str, str]) -> bool:
        """The champion was shipped from the very ONNX model this plan exports: comparing it with
        itself cannot fail, and a rerun of a shipped manifest stays cached."""
        card = Path(config.path).parent / "model_card.json"
        try:
            lineage = json.loads(card.read_text())["artifacts"]["export"]
        except (OSError, ValueError, KeyError, TypeError):
            return False  # an unreadable card: compare with the champion's file as it is
        return lineage == ids.get("export")

    def run(self, config: ChampionConfig, ctx: StageContext) -> StageResult:
        if sha256_file(Path(config.path)) != config.sha256:
            raise ManifestError(f"{config.path}: changed since the plan; run again")
        test = test_split(config.data)
        session = create_session(config.path)
        spec = session.get_inputs()[0].shape[1:]
        if list(spec) != list(test.sample_shape):
            return StageResult(
                {
                    "comparable": False,
                    "version": config.version,
                    "why": f"the champion takes {list(spec)} images, this data set is "
                    f"{list(test.sample_shape)}",
                },
                f"{config.version}: not comparable",
            )
        logits = np.concatenate(
            [run_batched(session, batch.numpy()) for batch in test.batches(256)]
        )
        labels = test.labels.numpy()
        classes = describe(config.data.source)["num_classes"]
        if logits.shape[1] != classes:
            return StageResult(
                {
                    "comparable": False,
                    "version": config.version,
                    "why": f"the champion has {logits.shape[1]} classes, this data set {classes}",
                },
                f"{config.version}: not comparable",
            )
        save_tensors(
            {"labels": test.labels, "champion": torch.from_numpy(logits)},
            ctx.out_dir / ChampionRecord.PREDICTIONS,
        )
        top1 = float((logits.argmax(1) == labels).mean() * 100.0)
        return StageResult(
            {"comparable": True, "version": config.version, "top1": top1, "samples": len(labels)},
            f"{config.version} test top-1 {top1:.2f}",
        )
