"""Errors that reach the user as one line: what went wrong and how to fix it."""


class SlimkitError(Exception):
    """Base class. ``str(err)`` is a single line meant for the user."""


class ConfigError(SlimkitError, ValueError):
    """A config, recipe or option is invalid."""


class LoadError(SlimkitError):
    """A model or data set could not be loaded."""


class DataError(SlimkitError, ValueError):
    """Data has the wrong shape, is empty, or holds NaN/Inf."""


class ExportError(SlimkitError):
    """ONNX export failed or its parity check did not pass."""
