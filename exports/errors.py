"""Errors of the export back-ends."""


class BackendUnavailable(RuntimeError):
    """An optional back-end or the hardware it needs is missing (exit code 3)."""


class ExportError(RuntimeError):
    """An export or a parity check failed."""
