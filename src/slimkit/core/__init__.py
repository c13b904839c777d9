"""Core: config base, technique registry, layer targeting, the context."""
from .config import Config, check_choice, check_range
from .context import Context, seed_everything
from .errors import ConfigError, DataError, ExportError, LoadError, SlimkitError
from .registry import Technique, get_technique, list_techniques, register_technique
from .targets import Targets

__all__ = [
    "Config", "check_choice", "check_range", "Context", "seed_everything", "ConfigError", "DataError",
    "ExportError", "LoadError", "SlimkitError", "Technique", "get_technique", "list_techniques",
    "register_technique", "Targets",
]
