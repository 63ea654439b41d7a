"""Errors the method package raises for a user's input (the CLI maps them to exit code 2)."""


class DataError(ValueError):
    """A data set is missing, malformed, or does not fit the manifest."""


class CheckpointError(ValueError):
    """A weights file is missing, unsafe, corrupt, or does not fit the architecture."""


class NumericalError(RuntimeError):
    """A loss became NaN or infinite during training."""
