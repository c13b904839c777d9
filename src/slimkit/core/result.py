"""What a technique hands back, and the one place that reads it.

A technique returns either a plain ``nn.Module`` (structured pruning gives the user's own class, narrower; low-rank
and depthwise conversion give it with replaced layers; distillation a student) or a ``Compressed`` wrapper when its
result is not a plain float model yet. The wrapper's contract, each part optional (a default here):

- ``slimkit_finalize()``: the plain model to export and measure (pruning masks and shared-weight codebooks made
  permanent); default: the wrapper itself;
- ``slimkit_simulated``: its PyTorch forward simulates integer arithmetic in float, so PyTorch timings of it are not
  a deployment figure (the exported file is);
- ``slimkit_metrics``: its own figures for the report (quantization details);
- ``slimkit_export(data, path)``: its own ONNX form (QDQ int8, integer MatMul, MatMulNBits), parity-checked;
- ``slimkit_lower(data)``: the same integer model as a PT2E quantize/dequantize program for LiteRT, TFLM and
  ExecuTorch;
- ``slimkit_dequantized()``: for weight-only or dynamic int8 results, the float model whose weights are slimkit's
  int8 codes times their scales, for a runtime's own dynamic-range int8 (LiteRT: its per-channel weight codes then
  are slimkit's, activations quantized at run time).

The runner, the exporters, the runtimes and the planner's meter ask through the functions below (``finalized``,
``is_simulated``, ``own_metrics``, ``own_export``, ``lowers``), so a new kind of result is one subclass.
"""
from __future__ import annotations

from typing import Callable, ClassVar, Optional

import torch.nn as nn


class Compressed(nn.Module):
    """Base of the technique results that are not plain float models (see the module docstring)."""

    slimkit_simulated: ClassVar[bool] = False
    slimkit_export: ClassVar[Optional[Callable]] = None
    slimkit_lower: ClassVar[Optional[Callable]] = None
    slimkit_dequantized: ClassVar[Optional[Callable]] = None

    def slimkit_finalize(self) -> nn.Module:
        return self

    @property
    def slimkit_metrics(self) -> dict:
        return {}


def finalized(model: nn.Module) -> nn.Module:
    """The plain model behind a technique's result (masks made permanent); a plain model as it is."""
    return model.slimkit_finalize() if isinstance(model, Compressed) else model


def is_simulated(model: nn.Module) -> bool:
    """Whether ``model``'s PyTorch forward is an integer-arithmetic simulation (its PyTorch timings do not count)."""
    return isinstance(model, Compressed) and model.slimkit_simulated


def own_metrics(model: nn.Module) -> dict:
    return dict(model.slimkit_metrics) if isinstance(model, Compressed) else {}


def own_export(model: nn.Module) -> Optional[Callable]:
    """``export(data, path)`` of a result with its own ONNX form; None for models the plain exporter takes."""
    return model.slimkit_export if isinstance(model, Compressed) and model.slimkit_export is not None else None


def lowers(model: nn.Module) -> bool:
    """Whether ``model`` is slimkit's quantized simulation that lowers to an int8 program (``slimkit_lower``)."""
    return isinstance(model, Compressed) and model.slimkit_lower is not None


def dequantizes(model: nn.Module) -> bool:
    """Whether ``model`` is slimkit's dynamic or weight-only int8 with a dequantized float form (``dequantized``)."""
    return isinstance(model, Compressed) and model.slimkit_dequantized is not None


def dequantized(model: nn.Module) -> Optional[nn.Module]:
    """The float model with slimkit's dequantized int8 weights (``slimkit_dequantized``); None for other models."""
    return model.slimkit_dequantized() if dequantizes(model) else None
