"""Errors that reach the user as one line: what went wrong and how to fix it."""
from __future__ import annotations


class SlimkitError(Exception):
    """Base class. ``str(err)`` is a single line meant for the user."""


class ConfigError(SlimkitError, ValueError):
    """A config, recipe or option is invalid."""


class LoadError(SlimkitError):
    """A model or data set could not be loaded."""


class UnsafeFileError(LoadError):
    """Loading the file would unpickle (run code from) it; refused without ``--trust-pickle``."""


class DataError(SlimkitError, ValueError):
    """Data has the wrong shape, is empty, or holds NaN/Inf."""


class ModelError(SlimkitError, ValueError):
    """The user's model is broken (NaN/Inf weights) or its own code raised."""


class ExportError(SlimkitError):
    """ONNX export failed or its parity check did not pass."""


class OutputError(SlimkitError):
    """An output location is unusable (would overwrite an input or a user's file, read-only, full)."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, or its type name: never raises on empty messages."""
    for line in str(e).strip().splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(e).__name__


def is_user_file(filename: str, *, libraries: bool = False) -> bool:
    """A source file of the user's code: outside torch, slimkit, the CLI libraries and the standard library, and,
    unless ``libraries``, outside installed packages and transformers."""
    import os

    f = filename.replace(os.sep, "/")
    ours = ("/torch/", "/slimkit/", "/typer/", "/click/") + (() if libraries else ("/transformers/",))
    if any(k in f for k in ours):
        return False
    return not ("/lib/python3." in f and not (libraries and "/site-packages/" in f))


def user_frame(e: BaseException, *, libraries: bool = False) -> str:
    """' (at FILE:LINE)' for the innermost traceback frame in the user's code (:func:`is_user_file`)."""
    import traceback

    for fr in reversed(traceback.extract_tb(e.__traceback__)):
        if is_user_file(fr.filename, libraries=libraries):
            return f" (at {fr.filename}:{fr.lineno})"
    return ""


def did_you_mean(name: str, known) -> str:
    """' (did you mean X?)' for a near miss among ``known``, else ''."""
    import difflib

    hit = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {hit[0]!r}?)" if hit else ""
