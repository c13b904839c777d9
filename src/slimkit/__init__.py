"""slimkit: make trained PyTorch models small and fast, and prove it with measurements.

Names are imported on first use (PEP 562), so ``import slimkit`` and ``slimkit --help`` do not pay for torch."""
__version__ = "0.1.0"

import importlib as _importlib

from .core.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "Config": ".core", "Context": ".core", "Targets": ".core", "get_technique": ".core", "list_techniques": ".core",
    "register_technique": ".core", "Candidate": ".evaluate", "compare": ".evaluate", "profile": ".evaluate",
    "export_onnx": ".export", "load_data": ".load", "load_model": ".load", "resolve": ".load",
    "compress": ".pipeline", "Recipe": ".pipeline", "optimize": ".search",
}
_FAMILIES = ("quantize", "prune", "factorize", "distill")

__all__ = ["__version__", *_EXPORTS, *_FAMILIES]


def _family(name: str):
    """``slimkit.prune(model, config, data)`` etc. without importing the family (or torch) first."""
    if name in _FAMILIES:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'slimkit' has no attribute {name!r}")


__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals(), _family)
