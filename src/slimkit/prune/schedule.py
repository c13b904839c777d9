"""Sparsity schedules."""
from __future__ import annotations


def agp(step: int, *, final: float, initial: float = 0.0, start: int = 0, end: int) -> float:
    """Automated gradual pruning (Zhu & Gupta, 2017):
    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0))^3, constant outside [t0, t_end]."""
    if end <= start:
        raise ValueError("end must be after start")
    if step <= start:
        return initial
    if step >= end:
        return final
    frac = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - frac) ** 3
