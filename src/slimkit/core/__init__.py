"""Core: config base, technique registry, layer targeting, the context, errors, atomic I/O, safe loading.

Names are imported on first use, so the light modules (errors, io, progress) stay light."""
import importlib as _importlib

_EXPORTS = {
    "Config": ".config", "check_choice": ".config", "check_range": ".config", "Context": ".context",
    "seed_everything": ".context", "ConfigError": ".errors", "DataError": ".errors", "ExportError": ".errors",
    "LoadError": ".errors", "SlimkitError": ".errors", "Technique": ".registry", "get_technique": ".registry",
    "list_techniques": ".registry", "register_technique": ".registry", "Targets": ".targets",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'slimkit.core' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
