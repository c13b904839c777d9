"""Search over per-layer plans under a budget (used by structured pruning,
low-rank rank selection and mixed precision)."""
from .greedy import greedy_levels

__all__ = ["greedy_levels"]
