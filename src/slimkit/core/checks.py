"""Checks on a user's model that every layer may need (no technique knowledge here)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .errors import DataError, ModelError, first_line, user_frame

if TYPE_CHECKING:
    from .data import DataBundle


def check_finite_weights(model: torch.nn.Module) -> None:
    """Name a NaN or Inf parameter or buffer before any work (not as a parity failure after training)."""
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
                bad = int((~torch.isfinite(t.detach())).sum())
                raise ModelError(f"the model's {kind} {name!r} holds {bad} NaN/Inf value(s); fix or retrain the "
                                 "model before compressing it")


#: messages by which torch reports inputs of the wrong shape or type (the data's fault, not the model's)
_MISMATCH = ("shape", "size mismatch", "mat1", "mat2", "expected input", "expected scalar type", "dtype",
             "channels", "dimension", "must match", "Expected", "input.size", "number of dims", "to have",
             "index out of range", "out of bounds", "not implemented for", "Input type")


def check_compatible(model: torch.nn.Module, data: "DataBundle") -> None:
    """Check the weights, then run the model on two samples: a shape/dtype mismatch is the data's error, anything
    else the model raises is the model's own error (named with the line of its code)."""
    from .context import eval_mode

    check_finite_weights(model)
    ex = data.example_inputs(2)
    shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in ex)
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(*ex)
    except Exception as e:  # noqa: BLE001 - classified below
        first = first_line(e, 160)
        if isinstance(e, (RuntimeError, ValueError, IndexError, TypeError)) and any(k in str(e) for k in _MISMATCH):
            raise DataError(f"the model rejects inputs of shape {shapes} from {data.name!r} ({first}); "
                            "pass --data that matches the model's input") from None
        raise ModelError(f"the model's forward raised {type(e).__name__} on inputs of shape {shapes} from "
                         f"{data.name!r}: {first}{user_frame(e)}") from None
    if not isinstance(out, torch.Tensor):
        raise DataError(f"the model returns {type(out).__name__}; slimkit needs a model that returns one tensor "
                        "(wrap it to return logits or embeddings)")
    if out.is_floating_point() and not bool(torch.isfinite(out).all()):
        raise ModelError(f"the model's output on {data.name!r} holds NaN/Inf; check its weights and inputs")
    if data.task == "classification" and data.num_classes and out.ndim == 2 and out.shape[1] < data.num_classes:
        raise DataError(f"the model outputs {out.shape[1]} classes but {data.name!r} has {data.num_classes}")
