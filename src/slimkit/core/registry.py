"""The explicit technique registry. One registry drives the API, the CLI
(`slimkit list`), recipes and the contract tests."""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from .config import Config
from .errors import ConfigError, did_you_mean

#: What a technique may need from the context before it can run.
NEEDS = ("calibration_data", "train_data", "eval_data", "teacher", "example_inputs")


@dataclasses.dataclass(frozen=True)
class Technique:
    name: str
    config_cls: type[Config]
    apply: Callable  # (model, config, ctx) -> model
    needs: tuple[str, ...] = ()
    summary: str = ""
    family: str = ""
    #: its result runs only in ONNX Runtime (kernels the on-device runtimes lack): why, in a few words; "" = it
    #: exports to every runtime
    onnx_only: str = ""
    #: on-device runtimes an ``onnx_only`` result still exports to, in that runtime's own form (dynamic int8:
    #: LiteRT's dynamic-range int8 of slimkit's codes)
    lowers_to: tuple = ()

    def exports_to(self, runtime: str) -> bool:
        return runtime == "ort" or not self.onnx_only or runtime in self.lowers_to


_REGISTRY: dict[str, Technique] = {}


def register_technique(name: str, config_cls: type[Config], *, needs: Iterable[str] = (), summary: str = "",
                       family: str = "", onnx_only: str = "", lowers_to: Iterable[str] = ()):
    """Decorator: register ``fn(model, config, ctx) -> model`` under ``name``."""
    needs = tuple(needs)
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise ValueError(f"unknown need(s) {bad}; known: {NEEDS}")

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].apply is not fn:
            raise ValueError(f"technique {name!r} registered twice")
        _REGISTRY[name] = Technique(name, config_cls, fn, needs, summary or (fn.__doc__ or "").strip().split("\n")[0],
                                    family or name.split(".")[0], onnx_only, tuple(lowers_to))
        return fn

    return deco


def get_technique(name: str) -> Technique:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none registered)"
        raise ConfigError(f"unknown technique type {name!r}{did_you_mean(name, _REGISTRY)}; known: {known}") from None


def list_techniques() -> list[Technique]:
    _load_builtin()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def _load_builtin() -> None:
    """Import the technique packages so that their decorators run."""
    import importlib

    for mod in ("slimkit.quantize", "slimkit.prune", "slimkit.factorize", "slimkit.distill"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # technique family not built yet
            if e.name != mod:
                raise
