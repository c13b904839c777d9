"""Package attributes imported on first use (PEP 562), so that light entry points (``slimkit --help``) stay light."""
from __future__ import annotations

import importlib
from typing import Callable, Optional


def lazy_exports(package: str, exports: dict[str, str], namespace: dict,
                 fallback: Optional[Callable[[str], object]] = None):
    """(``__getattr__``, ``__dir__``) for ``package``: ``exports`` maps a name to the submodule that defines it
    (relative, e.g. ``.config``); ``fallback`` handles other names (or None: AttributeError)."""

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name], package), name)
            namespace[name] = value
            return value
        if fallback is not None:
            return fallback(name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(namespace.get("__all__", exports))

    return __getattr__, __dir__
