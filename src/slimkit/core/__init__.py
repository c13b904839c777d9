"""Core: config base, technique registry, layer targeting, the context, errors, atomic I/O, safe loading.

Names are imported on first use, so the light modules (errors, io, progress) stay light."""
from .lazy import lazy_exports

_EXPORTS = {
    "Config": ".config", "check_choice": ".config", "check_range": ".config", "Context": ".context",
    "seed_everything": ".context", "ConfigError": ".errors", "DataError": ".errors", "ExportError": ".errors",
    "LoadError": ".errors", "SlimkitError": ".errors", "Technique": ".registry", "get_technique": ".registry",
    "list_techniques": ".registry", "register_technique": ".registry", "Targets": ".targets",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
