"""Which layers a technique touches ("what vs where"): names, ``re:`` patterns,
layer types, and excludes, reusable across techniques."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator

import torch.nn as nn

from .errors import ConfigError

_TYPE_ALIASES = {
    "Linear": nn.Linear, "Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "Conv3d": nn.Conv3d,
    "BatchNorm1d": nn.BatchNorm1d, "BatchNorm2d": nn.BatchNorm2d, "LayerNorm": nn.LayerNorm,
    "Embedding": nn.Embedding, "LSTM": nn.LSTM, "GRU": nn.GRU, "MultiheadAttention": nn.MultiheadAttention,
}


@dataclasses.dataclass
class Targets:
    """Select modules of a model.

    ``include`` entries are exact module names, ``re:<regex>`` patterns matched
    against the full dotted name, or layer type names (``Linear``, ``Conv2d``).
    ``exclude`` uses the same syntax and wins over ``include``. An empty
    ``include`` means "every module of the given ``types``".
    """

    include: list[str] = dataclasses.field(default_factory=list)
    exclude: list[str] = dataclasses.field(default_factory=list)
    types: list[str] = dataclasses.field(default_factory=lambda: ["Linear", "Conv1d", "Conv2d"])

    def __post_init__(self) -> None:
        for t in self.types:
            if t not in _TYPE_ALIASES:
                raise ConfigError(f"unknown layer type {t!r} in targets; known: {', '.join(_TYPE_ALIASES)}")
        for p in list(self.include) + list(self.exclude):
            if p.startswith("re:"):
                try:
                    re.compile(p[3:])
                except re.error as e:
                    raise ConfigError(f"bad regex {p!r} in targets: {e}") from None

    @classmethod
    def from_dict(cls, data: Any) -> "Targets":
        if isinstance(data, Targets):
            return data
        if isinstance(data, str):
            return cls(include=[data])
        if isinstance(data, list):
            return cls(include=list(data))
        data = dict(data or {})
        unknown = set(data) - {"include", "exclude", "types"}
        if unknown:
            raise ConfigError(f"targets: unknown key(s) {sorted(unknown)}; use include, exclude, types")
        return cls(**data)

    def to_dict(self) -> dict:
        return {"include": list(self.include), "exclude": list(self.exclude), "types": list(self.types)}

    def _match(self, pattern: str, name: str, module: nn.Module) -> bool:
        if pattern.startswith("re:"):
            return re.fullmatch(pattern[3:], name) is not None or re.search(pattern[3:], name) is not None
        if pattern in _TYPE_ALIASES:
            return isinstance(module, _TYPE_ALIASES[pattern])
        return name == pattern

    def select(self, model: nn.Module, *, strict: bool = True) -> Iterator[tuple[str, nn.Module]]:
        """Yield ``(name, module)`` for every selected module.

        With ``strict``, an exact name in ``include`` that does not exist raises.
        """
        types = tuple(_TYPE_ALIASES[t] for t in self.types)
        named = dict(model.named_modules())
        if strict:
            missing = [p for p in self.include
                       if not p.startswith("re:") and p not in _TYPE_ALIASES and p not in named]
            if missing:
                raise ConfigError(f"targets name layer(s) that do not exist: {', '.join(missing)}")
        for name, mod in named.items():
            if not name or not isinstance(mod, types):
                continue
            if self.include and not any(self._match(p, name, mod) for p in self.include):
                continue
            if any(self._match(p, name, mod) for p in self.exclude):
                continue
            yield name, mod
