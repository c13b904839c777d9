"""The runtime contract and registry."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..core.errors import ConfigError, ExportError, LoadError, did_you_mean
from ..core.result import finalized, lowers, own_export


@dataclasses.dataclass
class Artifact:
    """A model file for one runtime. ``batch``: the batch size it was exported for (None: any)."""

    path: Path
    runtime: str
    precision: str  # fp32 | int8
    batch: Optional[int] = None
    #: who chose the int8 numbers: "slimkit" (its own calibration, lowered) or "stock" (the runtime's quantizer)
    quantizer: str = ""
    #: the export's own check against the model it came from (int8: ``check_int8``)
    parity: dict = dataclasses.field(default_factory=dict)


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
    #: the precisions its export writes from a float model (slimkit's int8 model is int8 in every runtime)
    precisions: tuple = ("fp32", "int8")

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise ConfigError(f"runtime {self.name} exports {', '.join(self.precisions)}, not {precision!r}")

    def require(self) -> None:
        try:
            importlib.import_module(self.module)
        except ImportError:
            raise LoadError(f"runtime {self.name} needs {self.module}: {self.pip}") from None


@contextlib.contextmanager
def quiet(stdout: bool = True, capture: Optional[list] = None):
    """Silence what converters and native runtimes print (progress, absl logs, CPU probing, failed allocations) at
    the file-descriptor level, Python warnings logged through ``logging`` included; ``stdout=False`` keeps stdout.
    ``capture``: a list that receives what the native code printed (to name the reason of a native failure)."""
    import logging
    import tempfile

    fds = (1, 2) if stdout else (2,)
    sink = tempfile.TemporaryFile() if capture is not None else None
    devnull = os.dup(sink.fileno()) if sink is not None else os.open(os.devnull, os.O_WRONLY)
    saved = [os.dup(fd) for fd in fds]
    old = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
        py_err = io.StringIO()
        with contextlib.ExitStack() as st:
            if stdout:
                st.enter_context(contextlib.redirect_stdout(io.StringIO()))
            st.enter_context(contextlib.redirect_stderr(py_err))
            try:
                yield
            finally:
                if capture is not None:
                    capture.append(py_err.getvalue())
    finally:
        for fd, sv in zip(fds, saved):
            os.dup2(sv, fd)
            os.close(sv)
        os.close(devnull)
        logging.disable(old)
        if sink is not None:
            sink.seek(0)
            capture.append(sink.read().decode("utf-8", "replace"))
            sink.close()


def check_plain(model, runtime: str) -> None:
    """Refuse slimkit's ONNX-only quantized models (int4 weights, dynamic int8) for an on-device runtime."""
    if own_export(model) is not None and not lowers(model):
        raise ExportError(f"this model is slimkit's int4 weights or dynamic int8 (ONNX Runtime; dynamic int8 also "
                          f"LiteRT), which does not lower to {runtime}; use quantize.int8_static, quantize.qat or "
                          "quantize.mixed_precision, or export the float model with --int8")


def calibration_batches(data, batch: int, limit: int = 256):
    """Input tuples of exactly ``batch`` samples (a static-batch graph takes nothing else) covering the first
    ``limit`` samples of the calibration split; a split smaller than one batch is repeated to fill it."""
    calib = data.calib
    n = min(len(calib), limit)
    idx = torch.arange(-(-max(n, batch) // batch) * batch) % n  # whole batches, wrapping around the split
    for i in range(0, len(idx), batch):
        yield tuple(t[idx[i:i + batch]] for t in calib.inputs)


def stock_int8(model, data, batch: int, quantizer, *, fold_quantize: bool = True):
    """A runtime's stock PT2E flow on a float model: ``quantizer`` annotates the captured graph, observers calibrate
    on the calibration split (``calibration_batches``), ``convert_pt2e`` writes the Q/DQ graph."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(torch.export.export(model, data.example_inputs(batch)).module(), quantizer)
    for x in calibration_batches(data, batch):
        prepared(*x)
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


def export_form(model, runtime: str):
    """(the module to convert, whether it is slimkit's int8 model): slimkit's quantized models lower as they are;
    ONNX-only ones are refused; other models are finalized (pruning masks made permanent) first."""
    check_plain(model, runtime)
    if lowers(model):
        return model, True
    return finalized(model), False


#: an int8 artifact must agree with the model it was made from on this share of top-1 predictions (64 test samples)
MIN_INT8_AGREEMENT = 0.95


@torch.no_grad()
def check_int8(sess: "Session", model, data, label: str, precision: str = "int8") -> dict:
    """A quantized artifact (int8, or a weight format) against the model it came from (slimkit's simulation, or the
    float model for a stock quantizer) on up to 64 test samples: top-1 agreement for classification, cosine
    otherwise. Raises before the caller writes anything."""
    from ..core.context import eval_mode

    b = getattr(sess, "batch", 1) or 1  # an artifact of a fixed batch runs whole batches
    n = min(max(64 // b, 1) * b, len(data.test) // b * b)
    if n == 0:
        return {}
    split = data.test.slice(0, n)
    with eval_mode(model):
        ref = model(*split.inputs).float().numpy()
    got = np.concatenate([sess.run(x) for x, _ in split.batches(b)])
    err = float(np.max(np.abs(got - ref)))
    res = {"max_abs_err": err}
    if data.task == "classification":
        agree = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
        res["top1_agreement"] = agree
        if agree < MIN_INT8_AGREEMENT:
            raise ExportError(f"{label} agrees with the model it came from on only {agree:.1%} of top-1 predictions "
                              f"(max abs err {err:.3g}); nothing written")
    else:
        a, b = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
        cos = float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))
        res["cosine"] = cos
        if cos < 0.99:
            hint = ("; static int8 activations of a transformer's outlier-heavy layers drift in integer kernels "
                    "(docs/BENCHMARKS.md, MiniLM): for LiteRT use --precision int8-dynamic or int8-weights"
                    if precision == "int8" else "")  # static int8, not a weight format
            raise ExportError(f"{label} output has cosine {cos:.4f} to the model it came from; nothing written{hint}")
    return res


_RUNTIMES: dict[str, Runtime] = {}


def register_runtime(rt: Runtime) -> Runtime:
    _RUNTIMES[rt.name] = rt
    return rt


def _load() -> None:
    from . import executorch, litert, ort, tflm  # noqa: F401 - registration (cheap: heavy imports are lazy)


def get_runtime(name: str) -> Runtime:
    _load()
    if name not in _RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r}{did_you_mean(name, _RUNTIMES)}; known: {', '.join(_RUNTIMES)}")
    return _RUNTIMES[name]


def list_runtimes() -> list[Runtime]:
    _load()
    return list(_RUNTIMES.values())


def parse_precisions(spec: Optional[str], rts: Sequence[Runtime]) -> Optional[list[str]]:
    """'fp32,fp16' -> the precisions, each one that at least one of ``rts`` exports (before any work)."""
    precs = [p.strip() for p in spec.split(",") if p.strip()] if spec else None
    for p in precs or ():
        if not any(p in rt.precisions for rt in rts):
            raise ConfigError(f"--precision {p}: none of {', '.join(r.name for r in rts) or 'the runtimes'} exports "
                              "it; they export " + "; ".join(f"{r.name}: {', '.join(r.precisions)}" for r in rts))
    return precs


def parse_runtimes(spec: str) -> list[Runtime]:
    """'ort,litert' -> the runtimes, each checked to be installed (before any work)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ConfigError("--runtime is empty; give one or more of: " + ", ".join(r.name for r in list_runtimes()))
    rts = [get_runtime(n) for n in names]
    for rt in rts:
        rt.require()
    return rts
