"""Callable family packages: ``slimkit.prune(model, config, data)`` is the package ``slimkit.prune`` called.

The call itself is the API's (``slimkit.api.run_family``); like the registry loading the technique packages by
name, the family module finds it by name when first called, so no technique package imports the faces."""
from __future__ import annotations

import importlib
import sys
import types


class _Family(types.ModuleType):
    def __call__(self, model, config, data=None, *, teacher=None, seed: int = 0):
        run = importlib.import_module("slimkit.api").run_family
        return run(self.__name__.rsplit(".", 1)[-1], model, config, data, teacher=teacher, seed=seed)


def callable_family(module_name: str) -> None:
    """Make the package ``module_name`` callable (its class becomes a ModuleType that forwards calls)."""
    sys.modules[module_name].__class__ = _Family
