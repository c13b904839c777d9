"""The planner: search spaces read from the technique registry, candidates measured in the target runtime, an
Optuna study (resumable, shared by workers), the measured front and the chosen model (``slimkit optimize``)."""
from ..core.lazy import lazy_exports

_EXPORTS = {"optimize": ".planner", "OptimizeResult": ".planner", "parse_budget": ".planner",
            "SearchSpace": ".space", "Meter": ".measure"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
