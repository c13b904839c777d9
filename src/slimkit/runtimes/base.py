"""The runtime contract and registry."""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..core.errors import ConfigError, LoadError, did_you_mean


@dataclasses.dataclass
class Artifact:
    """A model file for one runtime. ``batch``: the batch size it was exported for (None: any)."""

    path: Path
    runtime: str
    precision: str  # fp32 | int8
    batch: Optional[int] = None


class Session:
    """An opened artifact: ``run`` takes the data's input tensors (float, as the PyTorch model takes them) and
    returns float outputs; int8 artifacts quantize the input and dequantize the output here."""

    def run(self, inputs: Sequence[torch.Tensor]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def runner(self, inputs: Sequence[torch.Tensor]) -> Callable[[], None]:
        """A zero-argument callable that runs one inference on prepared inputs (what the timer calls)."""
        return lambda: self.run(inputs)


@dataclasses.dataclass
class Runtime:
    name: str
    suffix: str
    summary: str
    module: str  # the Python package it needs
    pip: str  # how to install it
    export: Callable  # (model, data, path, precision, batch) -> Artifact
    open: Callable  # (artifact, threads) -> Session
    ops: Callable  # (artifact) -> list[str]
    version: Callable  # () -> str
    batch_n: bool = True  # can it run batch N (microcontroller interpreters run one sample)

    def require(self) -> None:
        try:
            importlib.import_module(self.module)
        except ImportError:
            raise LoadError(f"runtime {self.name} needs {self.module}: {self.pip}") from None


_RUNTIMES: dict[str, Runtime] = {}


def register_runtime(rt: Runtime) -> Runtime:
    _RUNTIMES[rt.name] = rt
    return rt


def _load() -> None:
    from . import litert, ort, tflm  # noqa: F401 - registration side effects (cheap: the heavy imports are lazy)


def get_runtime(name: str) -> Runtime:
    _load()
    if name not in _RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r}{did_you_mean(name, _RUNTIMES)}; known: {', '.join(_RUNTIMES)}")
    return _RUNTIMES[name]


def list_runtimes() -> list[Runtime]:
    _load()
    return list(_RUNTIMES.values())


def parse_runtimes(spec: str) -> list[Runtime]:
    """'ort,litert' -> the runtimes, each checked to be installed (before any work)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ConfigError("--runtime is empty; give one or more of: " + ", ".join(r.name for r in list_runtimes()))
    rts = [get_runtime(n) for n in names]
    for rt in rts:
        rt.require()
    return rts
