"""ONNX export (dynamic batch, opset >= 17) with a parity check in ONNX
Runtime on real inputs. A failing parity check is an error."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..core.context import eval_mode
from ..core.errors import ExportError, first_line
from ..core.graph import holds_program
from ..core.result import finalized, own_export
from ..core.io import ONNX_STAMP_KEY, atomic_write_bytes
from ..core.safeload import quiet_loggers
from ..core.data import DataBundle

DEFAULT_OPSET = 17


@dataclasses.dataclass
class Parity:
    max_abs_err: float
    cosine: float
    samples: int
    atol: float
    min_cosine: float
    agree_top1: Optional[float] = None

    @property
    def ok(self) -> bool:
        return self.max_abs_err <= self.atol and self.cosine >= self.min_cosine

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        return d


def ort_session(path_or_bytes, threads: int = 1, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = str(path_or_bytes) if isinstance(path_or_bytes, (str, os.PathLike)) else path_or_bytes
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def ort_run(sess, inputs: Sequence[torch.Tensor]) -> np.ndarray:
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(inputs):
        raise ExportError(f"the ONNX model takes {len(names)} inputs ({', '.join(names)}), the data gives {len(inputs)}")
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}
    return sess.run(None, feed)[0]


def onnx_bytes(model: nn.Module, example: tuple, input_names, dynamic_axes, opset: int) -> bytes:
    """The serialized ONNX model of ``model`` (dynamic batch, output named "output"); models built on a loaded
    ``.pt2`` program take the torch.export-based exporter."""
    if holds_program(model):
        return _to_bytes_dynamo(model, example, input_names, dynamic_axes, opset)
    buf = io.BytesIO()
    axes = {n: {0: "batch", **dynamic_axes.get(n, {})} for n in input_names}
    axes["output"] = {0: "batch"}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, buf, input_names=list(input_names), output_names=["output"],
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    return buf.getvalue()


def _to_bytes_dynamo(model: nn.Module, example: tuple, input_names, dynamic_axes, opset: int) -> bytes:
    """A model built on a loaded .pt2 program: its graph computes reshapes from ``sym_size`` of the batch, which the
    TorchScript exporter would bake in as the example's batch. The torch.export-based exporter keeps them symbolic."""
    from torch.export import Dim

    batch = Dim("batch", min=1)
    shapes = (tuple({0: batch, **{int(k): Dim(f"{n}_{v}", min=1) for k, v in dynamic_axes.get(n, {}).items()}}
                    for n in input_names),)
    # the exporter logs through torch's handlers (bound to the real stderr), e.g. "torchvision is not installed.
    # Skipping torchvision::nms" four times per export
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            quiet_loggers("torch.onnx", "torch.onnx._internal.exporter._registration"):
        warnings.simplefilter("ignore")
        onx = torch.onnx.export(model, example, dynamo=True, dynamic_shapes=shapes, input_names=list(input_names),
                                output_names=["output"], opset_version=max(opset, 18), verbose=False)
    proto = onx.model_proto
    _drop_debug_records(proto.graph)
    return proto.SerializeToString()


def _drop_debug_records(graph) -> None:
    """The exporter's debug records: per node (stack traces, fx names, class hierarchies), per value and
    initializer (torch.export's input kinds and original names), and the program's graph signature. Measured: a
    transformer's int8 file 244 KB -> 74 KB without the per-node records; HF ResNet's 140 KB -> 102 KB without the
    rest."""
    del graph.metadata_props[:]
    for group in (graph.node, graph.value_info, graph.input, graph.output, graph.initializer):
        for item in group:
            del item.metadata_props[:]


def export_onnx(model: nn.Module, data: DataBundle, out: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                check: bool = True, parity_samples: int = 64, atol: Optional[float] = None,
                min_cosine: float = 0.9999, reference: Optional[nn.Module] = None) -> Parity | None:
    """Export ``model`` to ``out`` and check it against PyTorch in ONNX Runtime.

    ``reference`` is the PyTorch module whose outputs ONNX must match (default:
    ``model``). The file is written atomically and only if parity holds.
    """
    if opset < 17:
        raise ExportError(f"opset {opset} is too old; slimkit exports opset >= 17")
    with eval_mode(model), eval_mode(reference or model):
        return _export_checked(model, data, out, opset=opset, check=check, parity_samples=parity_samples, atol=atol,
                               min_cosine=min_cosine, reference=reference)


def _export_checked(model, data, out, *, opset, check, parity_samples, atol, min_cosine, reference):
    example = data.example_inputs(2)
    try:
        blob = onnx_bytes(model, example, data.input_names, data.dynamic_axes, opset)
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ExportError(f"ONNX export failed: {first}") from None
    parity = None
    if check:
        parity = check_parity(reference or model, blob, data, samples=parity_samples, atol=atol, min_cosine=min_cosine)
        if not parity.ok:
            raise ExportError(f"ONNX parity check failed: max abs err {parity.max_abs_err:.3g} (allowed {parity.atol:.3g}), "
                              f"cosine {parity.cosine:.6f} (needs >= {parity.min_cosine}); nothing was written")
    write_onnx(out, blob)
    return parity


def export_artifact(model: nn.Module, data: DataBundle, path: str | os.PathLike):
    """Export whatever a technique produced: models that need a special ONNX form (int8 QDQ, integer MatMul,
    MatMulNBits) have their own (``core.result.own_export``); masks are made permanent first (``finalized``)."""
    model = finalized(model)
    fn = own_export(model)
    if fn is not None:
        return fn(data, path)
    return export_onnx(model, data, path)


def stamp(blob: bytes) -> bytes:
    """The serialized model with slimkit's ``generated_by`` metadata entry (protobuf merges a field appended to a
    message, so the graph is not re-serialized). A later run may replace a stamped file; an unstamped one it refuses."""
    import onnx

    from .. import __version__

    extra = onnx.ModelProto()
    extra.metadata_props.add(key=ONNX_STAMP_KEY, value=f"slimkit {__version__}")
    return blob + extra.SerializeToString()


def write_onnx(path: str | os.PathLike, model) -> None:
    """The one way slimkit writes an ONNX file: stamped, atomically (a ModelProto or its serialized bytes)."""
    blob = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString()
    if not isinstance(model, (bytes, bytearray)):
        for p in list(model.metadata_props):
            if p.key == ONNX_STAMP_KEY:  # an unpacked or rewritten slimkit file: one stamp, not two
                blob = _without_stamp(model)
                break
    atomic_write_bytes(path, stamp(bytes(blob)))


def _without_stamp(model) -> bytes:
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [p for p in m.metadata_props if p.key != ONNX_STAMP_KEY]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    return m.SerializeToString()


def output_error(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """Maximum absolute error and the minimum per-sample cosine between two output batches."""
    err = float(np.max(np.abs(ref - got)))
    a, b = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    cos = float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))
    return err, cos


@torch.no_grad()
def check_parity(model: nn.Module, onnx_model, data: DataBundle, *, samples: int = 64, atol: Optional[float] = None,
                 min_cosine: float = 0.9999) -> Parity:
    sess = ort_session(onnx_model, threads=2)
    split = data.test.slice(0, min(samples, len(data.test)))
    with eval_mode(model):
        ref = model(*split.inputs).float().numpy()
    try:
        got = ort_run(sess, split.inputs).astype(np.float32)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime's own errors: the exported file does not run this batch
        raise ExportError(f"the exported ONNX file does not run a batch of {len(split)} in ONNX Runtime "
                          f"({first_line(e, 140)}): the export fixed a size that depends on the batch; nothing "
                          "was written") from None
    if ref.shape != got.shape:
        raise ExportError(f"ONNX output shape {got.shape} differs from PyTorch {ref.shape}")
    err, cos = output_error(ref, got)
    scale = float(np.max(np.abs(ref))) or 1.0
    tol = atol if atol is not None else 1e-4 * max(1.0, scale)
    agree = float(np.mean(ref.argmax(-1) == got.argmax(-1))) if data.task == "classification" else None
    return Parity(err, cos, len(split), tol, min_cosine, agree)
