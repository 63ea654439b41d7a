"""``handle_errors``: each expected failure becomes one line on stderr and its exit code, without
importing torch to recognise an interrupted training (``cskd.interrupts`` is torch-free)."""

from __future__ import annotations

import errno
import signal

import click
import pytest
from click.testing import CliRunner

from cskd.interrupts import Interrupted
from pipeline.cli_base import handle_errors


def _invoke(exc: BaseException, **env: str):
    @click.command()
    @handle_errors
    def command() -> None:
        raise exc

    return CliRunner().invoke(command, [], env=env)


@pytest.mark.parametrize(("exc", "code", "says"), [
    (Interrupted(signal.SIGTERM, "epoch 3"), 143, "interrupted by SIGTERM at epoch 3"),
    (Interrupted(signal.SIGINT, "epoch 1"), 130, "interrupted by SIGINT at epoch 1"),
    (KeyboardInterrupt(), 130, "interrupted; rerun the same command to resume"),
    (OSError(errno.ENOSPC, "No space left on device", "store/x"), 4, "disk full while writing store/x"),
    (RuntimeError("boom"), 4, "RuntimeError: boom (set CSKD_DEBUG=1 for the traceback)"),
], ids=["sigterm", "sigint", "ctrl-c", "disk-full", "bug"])
def test_each_failure_is_one_line_with_its_exit_code(exc, code, says):
    result = _invoke(exc)
    assert result.exit_code == code
    (line,) = result.stderr.splitlines()  # one line, no traceback
    assert line.startswith("cskd-pipeline: error: ") and says in line


def test_cskd_debug_lets_the_traceback_through():
    result = _invoke(RuntimeError("boom"), CSKD_DEBUG="1")
    assert isinstance(result.exception, RuntimeError) and result.exit_code == 1
