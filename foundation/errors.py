"""Errors with their exit codes. The CLI prints one line and exits with ``exit_code``."""

from __future__ import annotations

EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_MISSING_BACKEND = 3
EXIT_RUNTIME = 4


class PipelineError(Exception):
    exit_code = EXIT_RUNTIME


class ManifestError(PipelineError):
    """The manifest (or a file it names) is wrong; the message names file, field and fix."""

    exit_code = EXIT_BAD_INPUT


class OutputError(PipelineError):
    """An output location would overwrite or leave what the pipeline may touch (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class MissingBackend(PipelineError):
    """An optional package, program or device the command needs is not here (exit 3)."""

    exit_code = EXIT_MISSING_BACKEND


class GateFailed(PipelineError):
    exit_code = EXIT_GATE_FAILED


class StoreError(PipelineError):
    """The artifact store is inconsistent (a digest mismatch, a missing or extra file)."""
