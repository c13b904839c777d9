"""The planner's search space, read from the technique registry.

A candidate is a recipe of ordered slots: **prune -> factorize -> recover (KD fine-tune) -> quantize**, one
technique (or none) per slot, each with the values of the fields its config declares tunable
(``Config.TUNABLE``). A technique joins the planner by declaring ``TUNABLE`` on its config; nothing here names a
technique. The order is fixed where it matters: channels and ranks are removed and recovered before the weights
are quantized (a quantized model is not trained further here). For on-device runtimes other than ONNX Runtime the
quantize slot holds the quantizers that lower to them (static int8, QAT, mixed precision: slimkit's int8 model in
the runtime), and a candidate without one draws the runtime's precision (fp32, or its stock PT2E int8)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from ..core.config import Tunable
from ..core.errors import ConfigError, did_you_mean, first_line
from ..core.registry import get_technique, list_techniques
from ..distill.finetune import Finetune
from ..pipeline.recipe import Recipe, Stage, Step

#: the slots, in the order a candidate applies them, and the technique families each may take
SLOTS: tuple[tuple[str, tuple[str, ...]], ...] = (("prune", ("prune",)), ("factorize", ("factorize",)),
                                                 ("quantize", ("quantize",)))
NONE = "none"


@dataclasses.dataclass
class Choice:
    technique: str
    ranges: dict[str, Tunable]


@dataclasses.dataclass
class SearchSpace:
    slots: list[tuple[str, list[Choice]]]
    finetune: dict[str, Tunable]
    precisions: tuple[str, ...] = ("fp32",)

    # -- building ------------------------------------------------------------------------
    @classmethod
    def from_registry(cls, include: Any = None, *, runtime: str = "ort", model=None, example=None) -> "SearchSpace":
        """Every registered technique whose config declares ``TUNABLE``; ``include`` narrows it: a list of
        technique names, or {technique: {field: range}} where a range is ``[low, high]``, a list of choices or one
        value (a technique outside the default space may be named: it runs with its defaults plus the given
        ranges). ``model``/``example``: ranges that depend on the model's structure (``Config.tunable_for``)."""

        def ranges_of(cfg_cls):
            base = cfg_cls.tunable_for(model, example) if model is not None else dict(cfg_cls.TUNABLE or {})
            return {**base, **cfg_cls.tunable_in(runtime)}

        default = {t.name: ranges_of(t.config_cls) for t in list_techniques() if t.config_cls.TUNABLE is not None}
        chosen: dict[str, dict[str, Tunable]]
        finetune = dict(Finetune.TUNABLE or {})
        if isinstance(include, str) and include.strip().startswith("{"):  # inline YAML/JSON mapping (the CLI)
            import yaml

            try:
                include = yaml.safe_load(include)
            except yaml.YAMLError as e:
                raise ConfigError(f"--space is not a valid YAML mapping ({first_line(e, 80)})") from None
        if isinstance(include, dict) and "finetune" in include:
            include = dict(include)
            over = include.pop("finetune") or {}
            fields = {f.name for f in dataclasses.fields(Finetune)}
            if not isinstance(over, dict):
                raise ConfigError("space: finetune takes {field: range}, e.g. {epochs: [2, 6]}")
            for field, rng in over.items():
                if field not in fields:
                    raise ConfigError(f"space: finetune has no field {field!r}{did_you_mean(field, fields)}")
                finetune[field] = Tunable.from_value(rng)
            if not include:
                include = None
        if include is None:
            chosen = default
        else:
            if isinstance(include, str):
                include = [s.strip() for s in include.split(",") if s.strip()]
            if isinstance(include, (list, tuple)):
                include = {name: {} for name in include}
            if not isinstance(include, dict) or not include:
                raise ConfigError("space: give technique names (e.g. prune.structured,quantize.int8_static) or a "
                                  "mapping {technique: {field: range}}")
            chosen = {}
            for name, over in include.items():
                known = [t.name for t in list_techniques()]
                if name not in known:
                    raise ConfigError(f"space: unknown technique {name!r}{did_you_mean(name, known)}; known: "
                                      f"{', '.join(sorted(default))} (the default space)")
                tech = get_technique(name)
                ranges = ranges_of(tech.config_cls)
                fields = {f.name for f in dataclasses.fields(tech.config_cls)}
                mappings = {f.name for f in dataclasses.fields(tech.config_cls) if f.default_factory is dict}
                if over is not None and not isinstance(over, dict):
                    raise ConfigError(f"space: {name} takes {{field: range}}, got {over!r}")
                for field, rng in (over or {}).items():
                    if field.partition(".")[0] not in fields:
                        raise ConfigError(f"space: {name} has no field {field!r}{did_you_mean(field, fields)}")
                    per_key = [k for k in ranges if k.startswith(field + ".")]
                    if not per_key and field in mappings:
                        continue  # a per-layer field (kernels, widths, drop) this model has nothing for
                    for k in per_key or [field]:  # widths: [0.5, 1.0] sets the range of every group's width
                        ranges[k] = Tunable.from_value(rng)
                chosen[name] = ranges
        slots = []
        for slot, families in SLOTS:
            opts = [Choice(n, r) for n, r in sorted(chosen.items()) if get_technique(n).family in families
                    and get_technique(n).exports_to(runtime)]
            if opts:
                slots.append((slot, opts))
        if not slots:
            raise ConfigError("space: no technique to search for this runtime (int4 weights and dynamic int8 run in "
                              "ONNX Runtime only; add a pruning, factorization or static int8 technique)")
        precisions = ("fp32",) if runtime == "ort" else ("int8",) if runtime == "tflm" else ("fp32", "int8")
        return cls(slots, finetune, precisions)

    # -- sampling --------------------------------------------------------------------------
    def sample(self, trial, seed: int = 0) -> tuple[Recipe, str]:
        """One candidate from an Optuna trial: (recipe, runtime precision)."""
        stages, reduce_steps = [], []
        quant_steps = []
        for slot, choices in self.slots:
            names = ([NONE] if len(self.slots) > 1 else []) + [c.technique for c in choices]
            pick = trial.suggest_categorical(slot, names)
            if pick == NONE:
                continue
            c = next(c for c in choices if c.technique == pick)
            cfg = get_technique(pick).config_cls.from_dict(_suggest(trial, pick, c.ranges))
            (quant_steps if slot == "quantize" else reduce_steps).append(Step(pick, cfg))
        if reduce_steps:
            ft = Finetune.from_dict(_suggest(trial, "finetune", self.finetune))
            stages.append(Stage("reduce", reduce_steps, ft if ft.epochs > 0 else None))
        if quant_steps:
            stages.append(Stage("quantize", quant_steps))
        if quant_steps and "int8" in self.precisions:  # slimkit's own int8 model, lowered to the runtime
            precision = "int8"
        elif len(self.precisions) > 1:
            precision = trial.suggest_categorical("precision", list(self.precisions))
        else:
            precision = self.precisions[0]
        name = "+".join(_label(s, c.ranges) for st in stages for s in st.techniques
                        for _, cs in self.slots for c in cs if c.technique == s.type) or "original"
        ft = next((st.finetune for st in stages if st.finetune is not None), None)
        if ft is not None:
            name += f"+kd{ft.epochs}"
        if len(self.precisions) > 1 and not quant_steps:  # drawn: fp32, or the runtime's own int8 of the model
            name += f"@{precision}"  # (a quantizer's candidate is slimkit's model, its label says which: no suffix)
        return Recipe(name=name, stages=stages, seed=seed,
                      description=f"found by slimkit optimize (trial {trial.number})"), precision

    def seed_points(self) -> list[dict]:
        """The Optuna parameters of the points the techniques' configs ask to be tried first (``SEED_POINTS``),
        each as a candidate of that technique alone; values the space cannot draw are left to the sampler."""
        points = []
        for slot, choices in self.slots:
            for c in choices:
                for point in get_technique(c.technique).config_cls.SEED_POINTS:
                    params = {slot: c.technique}
                    params.update({s: NONE for s, _ in self.slots if s != slot})
                    for key, value in point.items():
                        head, _, rest = key.partition(".")
                        if head == "finetune":
                            matches = {f"finetune.{rest}": self.finetune.get(rest)}
                        else:
                            matches = {f"{c.technique}.{f}": t for f, t in c.ranges.items()
                                       if f == key or f.startswith(key + ".")}
                        params.update({name: value for name, t in matches.items()
                                       if t is not None and len(t.choices) != 1 and t.admits(value)})
                    if any(k.startswith(c.technique + ".") for k in params):
                        points.append(params)
        return points

    def describe(self) -> dict:
        seeds = self.seed_points()
        return {"slots": {slot: {c.technique: {k: v.to_dict() for k, v in c.ranges.items()} for c in choices}
                          for slot, choices in self.slots},
                "finetune": {k: v.to_dict() for k, v in self.finetune.items()}, "precisions": list(self.precisions),
                **({"seed_points": seeds} if seeds else {})}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]

    def size(self) -> int:
        """How many techniques the space holds (for messages)."""
        return sum(len(c) for _, c in self.slots)


def _label(step: Step, ranges: dict[str, Tunable]) -> str:
    """A short name: the technique and the values the planner drew (fixed ones left out)."""
    vals = []
    for field, t in ranges.items():
        if len(t.choices) == 1:
            continue
        head, dot, key = field.partition(".")
        v = getattr(step.config, head)
        v = v.get(key) if dot else v
        vals.append(step.config.label_value(field, v))
    short = step.type.split(".", 1)[1]
    return f"{short}({'/'.join(vals)})" if vals else short


def _suggest(trial, prefix: str, ranges: dict[str, Tunable]) -> dict:
    """Values for a config's fields; ``field.key`` names fill one entry of a dict field (e.g. a width per group)."""
    out: dict = {}
    for field, t in ranges.items():
        name = f"{prefix}.{field}"
        if t.choices:
            v = t.choices[0] if len(t.choices) == 1 else trial.suggest_categorical(name, list(t.choices))
        elif t.is_int:
            v = trial.suggest_int(name, t.low, t.high, step=t.step or 1, log=t.log)
        else:
            v = trial.suggest_float(name, float(t.low), float(t.high), step=t.step, log=t.log)
        head, dot, key = field.partition(".")
        if dot:
            out.setdefault(head, {})[key] = v
        else:
            out[field] = v
    return out
