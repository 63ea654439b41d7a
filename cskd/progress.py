"""Step progress for training on a terminal (rich), and nothing off a terminal.

The caller passes a ``rich.progress.Progress`` it owns (the pipeline shows an
overall line in the same display), ``True`` for a display of the engine's own,
or ``False``. Reading the loss needs a host sync, so it is read every
``LOSS_EVERY`` steps and only while someone is watching.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

LOSS_EVERY = 20
# The pipeline's overall line is a task with this field: each training step advances it by
# 1/steps-per-epoch, so it counts epochs and its time-remaining column is the whole run's ETA.
OVERALL_FIELD = "overall"


@contextlib.contextmanager
def epoch_steps(progress, items: Iterable, *, total: int, label: str) -> Iterator:
    """Yield ``(advance, items)``: call ``advance(loss_tensor)`` after each step."""
    if not progress:
        yield (lambda loss: None), items
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    own = not isinstance(progress, Progress)
    display = (
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        if own
        else progress
    )
    with display if own else contextlib.nullcontext():
        task = display.add_task(label, total=total)
        overall = next((t.id for t in display.tasks if t.fields.get(OVERALL_FIELD)), None)
        count = [0]

        def advance(loss) -> None:
            count[0] += 1
            if count[0] % LOSS_EVERY == 1:  # fixed width, so the bar after it does not jump
                display.update(task, description=f"{label}  loss {float(loss):9.4f}")
            display.advance(task)
            if overall is not None:
                display.advance(overall, 1 / max(total, 1))

        try:
            yield advance, items
        finally:
            display.remove_task(task)
