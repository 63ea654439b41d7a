"""SIGINT/SIGTERM during training: collected, not fatal, so the loop can checkpoint at a
step boundary and then stop with ``Interrupted`` (the CLI exits 130 or 143)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Interrupted", "stop_requests", "SIGNAL_HOOK", "signal_hook"]


class Interrupted(Exception):  # noqa: N818 - it is a signal, not an error
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint."""

    def __init__(self, signum: int, where: str):
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} at {where}; checkpoint saved, "
            f"rerun the same command to resume"
        )
        self.signum = signum


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Collect SIGINT/SIGTERM instead of dying mid-step; the loop checks at step boundaries."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


SIGNAL_HOOK = "CSKD_TEST_SIGNAL_AT"


def signal_hook(label: str) -> tuple[int, int, int] | None:
    """Test hook: ``CSKD_TEST_SIGNAL_AT="<label part>:<epoch>:<step>:<KILL|TERM|INT>"`` makes a
    training whose label contains that part send itself the signal right after that step (1-based),
    so kill and resume tests stop a run at a fixed point instead of racing a stopwatch."""
    import os
    import signal

    spec = os.environ.get(SIGNAL_HOOK)
    if not spec:
        return None
    part, epoch, step, name = spec.rsplit(":", 3)
    return (int(epoch), int(step), getattr(signal, f"SIG{name}")) if part in label else None
