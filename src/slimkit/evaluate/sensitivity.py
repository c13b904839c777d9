"""One per-layer sensitivity search for every technique that spends a budget layer by layer (structured pruning's
channel groups, low-rank's ranks, mixed precision's bits, int4's 8-bit layers).

The shape, in the spirit of AIMET's greedy compression-ratio selection:

1. :class:`DropMeter`: the metric drop (and output SQNR) of a variant against the original, on a seeded sample of
   the *training* split (the decision never sees the test split the report states);
2. :func:`measure`: each unit alone at each level (a ratio, a rank share, a bit width), the drop and the share of
   the budget it saves, one progress bar, one table row per measured level;
3. :meth:`Sensitivity.allocate` (:func:`greedy_levels`): take the step with the least drop per unit saved until
   the *measured* saving of the whole plan reaches the target (savings of coupled layers do not simply add), or
   a one-line error when every unit is at its last level and the target is still out of reach;
   :func:`within_budget` is the dual (gain per unit of cost while a cost budget holds).

The technique supplies only what is its own: how to build a unit's variant at a level, and what it saves.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Hashable, Iterable, Optional

import torch

from ..core.context import eval_mode
from ..core.data import DataBundle
from ..core.errors import ConfigError
from ..core.progress import track
from .metrics import held_in_split, split_score


class DropMeter:
    """``meter(variant) -> (drop, output SQNR dB)`` against ``model``'s own outputs on ``samples`` seeded training
    samples. Both the original and every variant are scored in eval mode; their modes are given back."""

    def __init__(self, model: torch.nn.Module, data: DataBundle, samples: int, seed: int):
        self.data = data
        self.split = held_in_split(data, samples, seed)
        with torch.no_grad(), eval_mode(model):
            self.ref = torch.cat([model(*x) for x, _ in self.split.batches(256)]).float().numpy()
            self.base = split_score(model, self.split, data, self.ref)[0]

    def __call__(self, variant: torch.nn.Module) -> tuple[float, float]:
        with eval_mode(variant):
            score, sqnr = split_score(variant, self.split, self.data, self.ref)
        return self.base - score, sqnr


@dataclasses.dataclass
class Step:
    """One unit at one level, measured alone: its metric drop, the share of the budget it saves, the row it adds
    to the sensitivity table, and whatever the technique needs to apply it later (a replacement module, codes)."""

    drop: float
    saving: float
    row: dict = dataclasses.field(default_factory=dict)
    option: Any = None


@dataclasses.dataclass
class Sensitivity:
    """What :func:`measure` found: ``cost[u][j] = (drop, saving)`` of unit ``u`` alone at level ``j`` (level 0 =
    untouched), ``options[u][j]`` the technique's object for it, ``table`` the measured rows."""

    cost: dict
    options: dict
    table: list

    def allocate(self, target: float, achieved: Callable[[dict], float], short: str) -> dict:
        """Levels per unit whose measured saving reaches ``target``; ``short`` (formatted with ``got``, the saving
        reached with every unit at its last level) is the ConfigError when it cannot."""
        level, got = greedy_levels(self.cost, target, achieved)
        if got < target:
            raise ConfigError(short.format(got=got))
        return level


def measure(units: Iterable[Hashable], levels: Iterable, probe: Callable[[Hashable, Any], Optional[Step]],
            desc: str) -> Sensitivity:
    """Each unit alone at each level: ``probe(unit, level)`` builds and measures it, or returns None when the level
    is the same as the one before it (rounding made them equal, or the technique would not apply it): that level
    then costs and saves what the previous one did."""
    levels = list(levels)
    cost, options, table = {}, {}, []
    for u in track(list(units), desc):
        cost[u], options[u] = [(0.0, 0.0)], [None]
        for lv in levels:
            s = probe(u, lv)
            if s is None:
                cost[u].append(cost[u][-1])
                options[u].append(options[u][-1])
                continue
            cost[u].append((s.drop, s.saving))
            options[u].append(s.option)
            if s.row:
                table.append(s.row)
    return Sensitivity(cost, options, table)


def greedy_levels(cost: dict[Hashable, list[tuple[float, float]]], target: float,
                  achieved: Callable[[dict], float]) -> tuple[dict, float]:
    """``cost[k][j]`` = (metric drop, saving) of layer ``k`` alone at level ``j``
    (level 0 = untouched = (0, 0)). ``achieved(levels)`` measures the real saving
    of a whole plan (savings of coupled layers do not simply add). Returns
    (levels, achieved saving); the saving may fall short when every layer is at
    its last level; the caller decides whether that is an error."""
    level = {k: 0 for k in cost}
    predicted, got = 0.0, 0.0
    while True:
        best, best_rate, best_j = None, math.inf, 0
        for k, c in cost.items():
            d0, s0 = c[level[k]]
            # the next level that saves anything (rounding can make neighbouring levels identical)
            j = next((j for j in range(level[k] + 1, len(c)) if c[j][1] - s0 > 1e-9), None)
            if j is None:
                continue
            d1, s1 = c[j]
            rate = max(d1 - d0, 0.0) / (s1 - s0) + 1e-6 * level[k]
            if rate < best_rate:
                best, best_rate, best_j = k, rate, j
        if best is None:
            return level, achieved(level)
        predicted += cost[best][best_j][1] - cost[best][level[best]][1]
        level[best] = best_j
        if predicted >= target:
            got = achieved(level)
            if got >= target:
                return level, got


def within_budget(gain: dict[Hashable, tuple[float, float]], budget: float) -> list:
    """``gain[u] = (gain, cost)``: the units with the most gain per unit of cost, while their costs fit ``budget``
    (a unit that gains nothing is never taken). Greedy knapsack; returns the chosen units in the order taken."""
    chosen = []
    for u in sorted(gain, key=lambda u: -gain[u][0] / gain[u][1] if gain[u][1] > 0 else -math.inf):
        g, c = gain[u]
        if g > 0 and c <= budget:
            budget -= c
            chosen.append(u)
    return chosen
