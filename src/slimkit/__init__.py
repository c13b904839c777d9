"""slimkit: make trained PyTorch models small and fast, and prove it with measurements."""
__version__ = "0.1.0"

from .core import Config, Context, Targets, get_technique, list_techniques, register_technique  # noqa: E402
from .evaluate import Candidate, compare, profile  # noqa: E402
from .export import export_onnx  # noqa: E402
from .load import load_data, load_model  # noqa: E402

__all__ = ["__version__", "Config", "Context", "Targets", "get_technique", "list_techniques", "register_technique",
           "Candidate", "compare", "profile", "export_onnx", "load_data", "load_model"]

_FAMILIES = ("quantize", "prune", "factorize", "distill")


def __getattr__(name: str):
    """``slimkit.prune(model, config, data)`` etc. without importing the family first."""
    if name in _FAMILIES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'slimkit' has no attribute {name!r}")
