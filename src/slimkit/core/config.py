"""Config base class: configs are data (dataclasses) that validate on creation,
round-trip to plain dicts/YAML and carry a version."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar, Optional

from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Tunable:
    """A range the planner may search for one config field: ``choices`` (a categorical; one choice is a fixed
    value the planner sets), or ``low``..``high`` (``step`` for a grid, ``log`` for a log scale; whole numbers
    when both bounds are ints)."""

    low: Optional[float] = None
    high: Optional[float] = None
    choices: tuple = ()
    step: Optional[float] = None
    log: bool = False

    def __post_init__(self) -> None:
        if bool(self.choices) == (self.low is not None or self.high is not None):
            raise ValueError("a Tunable has either choices or low/high")
        if not self.choices and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError(f"a Tunable range needs low <= high, got {self.low}..{self.high}")

    @property
    def is_int(self) -> bool:
        return not self.choices and isinstance(self.low, int) and isinstance(self.high, int) \
            and (self.step is None or isinstance(self.step, int))

    def to_dict(self) -> dict:
        return {"choices": list(self.choices)} if self.choices else \
            {"low": self.low, "high": self.high, **({"step": self.step} if self.step else {}),
             **({"log": True} if self.log else {})}

    @classmethod
    def from_value(cls, v) -> "Tunable":
        """A user's override: ``[lo, hi]`` (numbers), a list of choices, ``{low:, high:}`` or ``{choices:}``."""
        if isinstance(v, Tunable):
            return v
        if isinstance(v, dict):
            try:
                return cls(**{k: tuple(x) if k == "choices" else x for k, x in v.items()})
            except (TypeError, ValueError) as e:
                raise ConfigError(f"search range {v!r}: {e}") from None
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) and
                                                                not isinstance(x, bool) for x in v):
            lo, hi = v
            if lo > hi:
                raise ConfigError(f"search range {list(v)}: low > high")
            return cls(lo, hi)
        if isinstance(v, (list, tuple)) and v:
            return cls(choices=tuple(v))
        return cls(choices=(v,))

    def admits(self, v) -> bool:
        """Whether ``v`` is a value this range can draw (a choice, or on the grid between the bounds)."""
        if self.choices:
            return v in self.choices
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not self.low <= v <= self.high:
            return False
        if self.is_int and int(v) != v:
            return False
        return self.step is None or abs((v - self.low) / self.step - round((v - self.low) / self.step)) < 1e-9


@dataclasses.dataclass
class Config:
    """Base for every technique/stage config.

    Subclasses are dataclasses; they override :meth:`validate` to check their
    fields and raise :class:`ConfigError` with a one-line message.
    """

    VERSION: ClassVar[int] = 1
    #: what the planner may search on this config, field -> Tunable (None: the technique does not take part in the
    #: planner; {}: it takes part as on/off with its defaults). A new technique joins ``slimkit optimize`` here.
    TUNABLE: ClassVar[Optional[dict[str, Tunable]]] = None
    #: points the planner tries first, before its sampler draws: {field: value}; a dict field's name (``widths``)
    #: sets every entry the space holds for it, ``finetune.<field>`` the candidate's recovery. A value the space
    #: cannot draw is left to the sampler.
    SEED_POINTS: ClassVar[tuple[dict, ...]] = ()

    def __post_init__(self) -> None:
        check_types(self)
        self.validate()

    @classmethod
    def tunable_for(cls, model, example) -> dict[str, Tunable]:
        """The planner's ranges for one model: ``TUNABLE`` unless the search space depends on the model's own
        structure (e.g. one width per channel group). A dotted name ``field.key`` sets one entry of a dict field."""
        return dict(cls.TUNABLE or {})

    @classmethod
    def label_value(cls, field: str, value: Any) -> str:
        """How a drawn value reads in a candidate's name (``widths(0.5/0.75)``); ``field`` may be dotted."""
        return f"{value:g}" if isinstance(value, float) else str(value) if value != "" else "-"

    @classmethod
    def tunable_in(cls, runtime: str) -> dict[str, Tunable]:
        """Ranges that exist only for some target runtimes (e.g. timing layers in the runtime the planner measures
        in); added to ``TUNABLE`` / ``tunable_for`` for that runtime."""
        return {}

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


_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", list: "a list",
          dict: "a mapping", tuple: "a list"}


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out = " or ".join(_describe(a) for a in args)
        return out + (" (or null)" if len(args) < len(typing.get_args(hint)) else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    base = origin or hint
    return _NAMES.get(base, getattr(base, "__name__", str(base)))


def _matches(value: Any, hint) -> bool:
    """Whether ``value`` fits the type hint (ints pass for floats; bools never pass for numbers)."""
    if hint is Any or hint is typing.Any:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    base = origin or hint
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base in (list, tuple):
        return isinstance(value, (list, tuple))
    if isinstance(base, type):
        return isinstance(value, base)
    return True  # a hint this checker does not model: the config's own validate() decides


def check_types(cfg: "Config") -> None:
    """Check every field against its type hint, naming the field and the expected type (one place for every
    config, so a recipe's ``epochs: "ten"`` is refused before anything runs)."""
    try:
        hints = typing.get_type_hints(type(cfg))
    except Exception:  # noqa: BLE001 - unresolvable forward references: leave it to validate()
        return
    for f in dataclasses.fields(cfg):
        hint = hints.get(f.name)
        if hint is None:
            continue
        v = getattr(cfg, f.name)
        conv = getattr(hint, "from_dict", None) if isinstance(hint, type) else None
        if conv is not None and not isinstance(v, hint) and isinstance(v, (dict, list, str)):
            v = conv(v)  # e.g. targets: {types: [Linear]} -> Targets (what from_dict does for YAML)
            setattr(cfg, f.name, v)
        if not _matches(v, hint):
            raise ConfigError(f"{type(cfg).__name__}.{f.name}: expected {_describe(hint)}, got {v!r}")
        if (hint is float or (typing.get_origin(hint) is typing.Union and float in typing.get_args(hint))) \
                and isinstance(v, float) and v != v:
            raise ConfigError(f"{type(cfg).__name__}.{f.name}: expected a number, got NaN")


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
