"""The live display: the overall line counts epochs (its time remaining is the run's ETA), the
loss field keeps its width, and the per-epoch line's ETA is right after a resume."""

from __future__ import annotations

import io
import re

import torch
from rich.console import Console
from rich.progress import Progress

from cskd.progress import OVERALL_FIELD, epoch_steps


def _display() -> Progress:
    return Progress(console=Console(file=io.StringIO(), force_terminal=True), transient=True)


def test_each_epoch_of_steps_advances_the_overall_line_by_one() -> None:
    with _display() as display:
        overall = display.add_task("pipeline", total=5, **{OVERALL_FIELD: True})
        for _ in range(2):
            with epoch_steps(display, range(7), total=7, label="[distill] resnet8 epoch") as (advance, items):
                for _ in items:
                    advance(torch.tensor(0.5))
        assert abs(display.tasks[0].completed - 2.0) < 1e-9
        assert [t.id for t in display.tasks] == [overall]      # each epoch's own bar is gone


def test_the_loss_field_keeps_its_width() -> None:
    widths = set()
    with _display() as display:
        for loss in (23.71, 0.0293, 1.5):
            with epoch_steps(display, range(1), total=1, label="x") as (advance, items):
                for _ in items:
                    advance(torch.tensor(loss))
                    widths.add(len(display.tasks[-1].description))
    assert len(widths) == 1


def test_the_epoch_line_eta_after_a_resume_counts_only_the_epochs_timed(monkeypatch) -> None:
    from stagekit import training

    clock = iter([0.0, 10.0])   # started; the first epoch this process trains ends 10 s later
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(clock))

    class Job:
        role, model = "teacher", "resnet20"

        class train:  # noqa: N801 - stands in for the TrainConfig the line reads
            epochs = 8

    lines = []
    line = training.epoch_lines(Job, 600, lines.append)
    line({"epoch": 5, "loss": 0.3, "val_top1": None})    # resumed at epoch 5: 3 epochs of 10 s left
    assert re.search(r"ETA 0:30$", lines[0]), lines[0]
