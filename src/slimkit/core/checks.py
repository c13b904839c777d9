"""Checks on a user's model that every layer may need (no technique knowledge here)."""
from __future__ import annotations

import torch

from .errors import ModelError


def check_finite_weights(model: torch.nn.Module) -> None:
    """Name a NaN or Inf parameter or buffer before any work (not as a parity failure after training)."""
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
                bad = int((~torch.isfinite(t.detach())).sum())
                raise ModelError(f"the model's {kind} {name!r} holds {bad} NaN/Inf value(s); fix or retrain the "
                                 "model before compressing it")
