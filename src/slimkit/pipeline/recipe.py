"""Recipes: an ordered list of stages, each a list of technique configs with
an explicit ``type:`` key and an optional recovery fine-tune. The same shape
in Python and YAML, versioned."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import yaml

from ..core.config import Config
from ..core.errors import ConfigError, did_you_mean, first_line
from ..core.registry import get_technique
from ..distill.finetune import Finetune  # noqa: F401 - part of the recipe format

RECIPE_VERSION = 1


@dataclasses.dataclass
class Step:
    """One technique in a stage: its registered ``type`` and its config."""

    type: str
    config: Config

    @classmethod
    def from_dict(cls, d: dict) -> "Step":
        if not isinstance(d, dict) or "type" not in d:
            raise ConfigError(f"each technique needs an explicit 'type:' key; got {d!r}")
        d = dict(d)
        t = d.pop("type")
        tech = get_technique(t)
        return cls(t, tech.config_cls.from_dict(d))

    def to_dict(self) -> dict:
        return {"type": self.type, **self.config.to_dict()}


@dataclasses.dataclass
class Stage:
    name: str
    techniques: list[Step] = dataclasses.field(default_factory=list)
    finetune: Optional[Finetune] = None

    @classmethod
    def from_dict(cls, d: dict, index: int = 0) -> "Stage":
        if not isinstance(d, dict):
            raise ConfigError(f"stage {index} must be a mapping with 'techniques:'; got {type(d).__name__}")
        unknown = set(d) - {"name", "techniques", "finetune"}
        if unknown:
            raise ConfigError(f"stage {index}: unknown key(s) {sorted(unknown)}; use name, techniques, finetune")
        techs = d.get("techniques") or []
        if not isinstance(techs, list):
            raise ConfigError(f"stage {index}: 'techniques' must be a list")
        ft = d.get("finetune")
        return cls(str(d.get("name") or f"stage{index}"), [Step.from_dict(t) for t in techs],
                   Finetune.from_dict(ft) if ft else None)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "techniques": [s.to_dict() for s in self.techniques]}
        if self.finetune is not None:
            out["finetune"] = self.finetune.to_dict()
        return out


@dataclasses.dataclass
class Recipe:
    name: str = "recipe"
    stages: list[Stage] = dataclasses.field(default_factory=list)
    description: str = ""
    seed: int = 0
    version: int = RECIPE_VERSION
    # the largest task-metric drop (absolute: 0.01 = one accuracy point, or 0.01 of cosine fidelity) this recipe
    # calls acceptable; a larger drop is a verdict in the report, not only a number
    max_drop: float = 0.01

    def __post_init__(self) -> None:
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float)) or not 0 <= self.max_drop <= 1:
            raise ConfigError(f"recipe.max_drop: expected a number in [0, 1] (0.01 = one point), got {self.max_drop!r}")
        if self.version != RECIPE_VERSION:
            raise ConfigError(f"recipe version {self.version} is not supported; this slimkit reads version {RECIPE_VERSION}")
        names = [s.name for s in self.stages]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"recipe has duplicate stage names: {', '.join(sorted(dup))}")

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        if not isinstance(d, dict):
            raise ConfigError("a recipe must be a mapping with 'stages:'")
        unknown = set(d) - {"name", "stages", "description", "seed", "version", "max_drop"}
        if unknown:
            raise ConfigError(f"recipe: unknown key(s) {sorted(unknown)}; use name, description, seed, version, "
                              "max_drop, stages")
        stages = d.get("stages") or []
        if not isinstance(stages, list):
            raise ConfigError("recipe 'stages' must be a list")
        for key in ("seed", "version"):
            v = d.get(key, 0)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"recipe.{key}: expected a whole number, got {v!r}")
        return cls(name=str(d.get("name", "recipe")), stages=[Stage.from_dict(s, i) for i, s in enumerate(stages)],
                   description=str(d.get("description", "")), seed=int(d.get("seed", 0)),
                   version=int(d.get("version", RECIPE_VERSION)), max_drop=d.get("max_drop", 0.01))

    def to_dict(self) -> dict:
        return {"version": self.version, "name": self.name, "description": self.description, "seed": self.seed,
                "max_drop": self.max_drop, "stages": [s.to_dict() for s in self.stages]}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise ConfigError(f"recipe is not valid YAML{where}: {getattr(e, 'problem', None) or first_line(e)}") from None
        return cls.from_dict(d or {})

    @classmethod
    def load(cls, path_or_name: str | Path) -> "Recipe":
        """Load a YAML file, or a built-in recipe by name (see ``recipes/``)."""
        p = Path(path_or_name)
        if not p.is_file():
            builtin = Path(__file__).parent.parent / "recipes" / f"{path_or_name}.yaml"
            if builtin.is_file():
                p = builtin
            else:
                names = sorted(x.stem for x in (Path(__file__).parent.parent / "recipes").glob("*.yaml"))
                raise ConfigError(f"recipe {path_or_name!r} not found{did_you_mean(path_or_name, names)} (no such "
                                  f"file; built-in: {', '.join(names)})")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read recipe {p} ({first_line(e, 80)}); give a YAML text file") from None
        return cls.from_yaml(text)

    def needs(self) -> dict[str, set[str]]:
        """What each technique needs from the context, by ``stage/type``."""
        out = {}
        for s in self.stages:
            for t in s.techniques:
                need = set(get_technique(t.type).needs)
                out[f"{s.name}/{t.type}"] = need
            if s.finetune is not None and s.finetune.epochs > 0:
                ft = {"train_data"} | ({"teacher"} if s.finetune.method == "kd" else set())
                out[f"{s.name}/finetune"] = ft
        return out
