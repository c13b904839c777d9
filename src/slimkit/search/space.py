"""The planner's search space, read from the technique registry.

A candidate is a recipe of ordered slots: **prune -> factorize -> recover (KD fine-tune) -> quantize**, one
technique (or none) per slot, each with the values of the fields its config declares tunable
(``Config.TUNABLE``). A technique joins the planner by declaring ``TUNABLE`` on its config; nothing here names a
technique. The order is fixed where it matters: channels and ranks are removed and recovered before the weights
are quantized (a quantized model is not trained further here). For on-device runtimes other than ONNX Runtime,
slimkit's int8 simulations do not export yet, so the quantize slot becomes the runtime's own precision choice
(fp32, or its PT2E int8)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from ..core.config import Tunable
from ..core.errors import ConfigError, did_you_mean
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
    def from_registry(cls, include: Any = None, *, runtime: str = "ort") -> "SearchSpace":
        """Every registered technique whose config declares ``TUNABLE``; ``include`` narrows it: a list of
        technique names, or {technique: {field: range}} where a range is ``[low, high]``, a list of choices or one
        value (a technique outside the default space may be named: it runs with its defaults plus the given
        ranges)."""
        default = {t.name: dict(t.config_cls.TUNABLE) for t in list_techniques() if t.config_cls.TUNABLE is not None}
        chosen: dict[str, dict[str, Tunable]]
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
                ranges = dict(tech.config_cls.TUNABLE or {})
                fields = {f.name for f in dataclasses.fields(tech.config_cls)}
                for field, rng in (over or {}).items():
                    if field not in fields:
                        raise ConfigError(f"space: {name} has no field {field!r}{did_you_mean(field, fields)}")
                    ranges[field] = Tunable.from_value(rng)
                chosen[name] = ranges
        slots = []
        for slot, families in SLOTS:
            if slot == "quantize" and runtime != "ort":
                continue
            opts = [Choice(n, r) for n, r in sorted(chosen.items()) if get_technique(n).family in families]
            if opts:
                slots.append((slot, opts))
        if not slots:
            raise ConfigError("space: no technique to search for this runtime (slimkit's quantizers export to ONNX "
                              "Runtime only; add a pruning or factorization technique)")
        precisions = ("fp32",) if runtime == "ort" else ("int8",) if runtime == "tflm" else ("fp32", "int8")
        return cls(slots, dict(Finetune.TUNABLE or {}), precisions)

    # -- sampling --------------------------------------------------------------------------
    def sample(self, trial, seed: int = 0) -> tuple[Recipe, str]:
        """One candidate from an Optuna trial: (recipe, runtime precision)."""
        stages, reduce_steps = [], []
        quant_steps = []
        for slot, choices in self.slots:
            names = [NONE] + [c.technique for c in choices]
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
        precision = trial.suggest_categorical("precision", list(self.precisions)) if len(self.precisions) > 1 \
            else self.precisions[0]
        name = "+".join(s.type for st in stages for s in st.techniques) or "original"
        return Recipe(name=name, stages=stages, seed=seed,
                      description=f"found by slimkit optimize (trial {trial.number})"), precision

    def describe(self) -> dict:
        return {"slots": {slot: {c.technique: {k: v.to_dict() for k, v in c.ranges.items()} for c in choices}
                          for slot, choices in self.slots},
                "finetune": {k: v.to_dict() for k, v in self.finetune.items()}, "precisions": list(self.precisions)}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]

    def size(self) -> int:
        """How many techniques the space holds (for messages)."""
        return sum(len(c) for _, c in self.slots)


def _suggest(trial, prefix: str, ranges: dict[str, Tunable]) -> dict:
    out = {}
    for field, t in ranges.items():
        name = f"{prefix}.{field}"
        if t.choices:
            out[field] = t.choices[0] if len(t.choices) == 1 else trial.suggest_categorical(name, list(t.choices))
        elif t.is_int:
            out[field] = trial.suggest_int(name, t.low, t.high, step=t.step or 1, log=t.log)
        else:
            out[field] = trial.suggest_float(name, float(t.low), float(t.high), step=t.step, log=t.log)
    return out
