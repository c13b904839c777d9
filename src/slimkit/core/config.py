"""Config base class: configs are data (dataclasses) that validate on creation,
round-trip to plain dicts/YAML and carry a version."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar

from .errors import ConfigError


@dataclasses.dataclass
class Config:
    """Base for every technique/stage config.

    Subclasses are dataclasses; they override :meth:`validate` to check their
    fields and raise :class:`ConfigError` with a one-line message.
    """

    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # pragma: no cover - default accepts everything
        """Raise ConfigError if a field is out of range."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Config):
                v = v.to_dict()
            elif hasattr(v, "to_dict"):
                v = v.to_dict()
            out[f.name] = v
        out["version"] = self.VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        data = dict(data or {})
        version = data.pop("version", cls.VERSION)
        if version != cls.VERSION:
            raise ConfigError(
                f"{cls.__name__} version {version} is not supported (this slimkit reads version {cls.VERSION})"
            )
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for k, v in data.items():
            hint = hints.get(k)
            if isinstance(hint, type) and issubclass(hint, Config) and isinstance(v, dict):
                v = hint.from_dict(v)
            elif hint is not None and getattr(hint, "from_dict", None) and isinstance(v, (dict, list, str)):
                v = hint.from_dict(v)
            kwargs[k] = v
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"{cls.__name__}: {e}") from None


def check_range(name: str, value: float, lo: float, hi: float, *, lo_open=False, hi_open=False) -> None:
    """Raise a ConfigError unless lo <= value <= hi (bounds optionally open)."""
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        lb = "(" if lo_open else "["
        hb = ")" if hi_open else "]"
        raise ConfigError(f"{name}={value} is outside {lb}{lo}, {hi}{hb}")


def check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, choices))}")
