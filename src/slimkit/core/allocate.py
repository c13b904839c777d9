"""Greedy per-layer level selection under a global budget, in the spirit of
AIMET's greedy compression-ratio selection: each layer was measured alone at
several compression levels (metric drop, share of the budget saved); take the
step with the least drop per unit saved until the *measured* saving of the
whole plan reaches the target."""
from __future__ import annotations

import math
from typing import Callable, Hashable


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
