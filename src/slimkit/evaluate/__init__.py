"""Measurement: task metric, params, MACs, size, latency, memory, energy estimate."""
from .compare import Candidate, compare, profile, verdicts
from .macs import count_macs, count_params
from .metrics import accuracy, fidelity, primary_metric, task_metrics

__all__ = ["Candidate", "compare", "profile", "verdicts", "count_macs", "count_params", "accuracy", "fidelity",
           "primary_metric", "task_metrics"]
