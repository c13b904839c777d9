"""ExecuTorch (PyTorch's on-device runtime, ``.pte``): ``torch.export`` -> ``to_edge_transform_and_lower`` with the
XNNPACK partitioner -> a ``.pte`` program, run by ``executorch.runtime``.

int8 comes two ways, as for LiteRT: slimkit's own quantized model (static int8, QAT, mixed precision) lowered with
its scales and int8 weight codes (``quantize/lower.py``), checked against slimkit's simulation before anything is
written; or, for a float model, the stock PT2E flow with ExecuTorch's ``XNNPACKQuantizer`` (symmetric per-channel
weights) calibrated on the calibration split. With a dynamic batch and a delegated convolution the program fails
at other batch sizes ("Attempted to resize a bounded tensor"), so a ``.pte`` is exported for one batch size (batch
1 for the phone case; one more for batch-N timing), like the ``.tflite`` files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.context import eval_mode
from ..core.errors import ExportError, first_line
from ..core.io import GENERATED_TAG, atomic_write_bytes
from .base import Artifact, Runtime, Session, check_int8, export_form, quiet, register_runtime, stock_int8

PIP = "pip install 'slimkit[executorch]' (executorch; install torch first)"


def _stock_int8(model, data, batch: int):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)

    return stock_int8(model, data, batch, XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)))


class _Conv1dAs2d(nn.Module):
    """A float Conv1d computed as a Conv2d over [N, C, 1, L] (the same numbers). executorch 1.5.1's XNNPACK refuses
    to load a float Conv1d over one input channel whose output is quantized next ("Failed to create depthwise
    convolution node ... xnn_status_invalid_parameter"), while the same layer written as a Conv2d loads: slimkit's
    int8 programs with a float first layer (``float_first``, ``int8_where_faster``) hit exactly that."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        c = self.conv
        y = F.conv2d(x.unsqueeze(2), c.weight.unsqueeze(2), c.bias, (1, c.stride[0]), (0, c.padding[0]),
                     (1, c.dilation[0]), c.groups)
        return y.squeeze(2)


def _float_conv1d_as_2d(prog: nn.Module) -> None:
    """Swap the float Conv1d layers that a lowered int8 program's graphs call (a copy slimkit made; quantized layers
    run inside their own wrapper modules and are not called by the graph) for ``_Conv1dAs2d``."""
    from ..core.graph import set_module

    for gm in [m for m in prog.modules() if isinstance(m, torch.fx.GraphModule)]:
        for node in gm.graph.nodes:
            if node.op != "call_module":
                continue
            m = gm.get_submodule(node.target)
            if type(m) is nn.Conv1d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
                set_module(gm, node.target, _Conv1dAs2d(m))


def _program(module, example) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    ep = torch.export.export(module, example)
    return to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def export(model, data, path, precision: str = "fp32", batch: int = 1) -> Artifact:
    """A ``.pte`` for exactly ``batch`` samples; slimkit's quantized models lower with their own int8 numbers."""
    try:
        with quiet(stdout=False):  # its import of torchao logs deprecation warnings
            import executorch.exir  # noqa: F401
    except ImportError:
        raise ExportError(f"runtime executorch needs executorch: {PIP}") from None
    model, slimkit_int8 = export_form(model, "ExecuTorch")
    if slimkit_int8:
        precision = "int8"
    example = data.example_inputs(batch)
    try:
        with eval_mode(model), torch.no_grad(), quiet(stdout=False):
            if precision == "int8":
                if slimkit_int8:
                    prog = model.slimkit_lower(data, fold_weights=True)
                    _float_conv1d_as_2d(prog)
                else:
                    prog = _stock_int8(model, data, batch)
            else:
                prog = model
            blob = _program(prog, example)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - the lowering raises many types; name the failure in one line
        raise ExportError(f"ExecuTorch export failed ({type(e).__name__}: {first_line(e, 160)}); an operator "
                          "without an ExecuTorch kernel is the usual cause") from None
    art = Artifact(Path(path), "executorch", precision, batch,
                   "slimkit" if slimkit_int8 else ("stock" if precision == "int8" else ""))
    if slimkit_int8:
        art.parity = check_int8(ExecuTorchSession(blob, batch), model, data, "ExecuTorch int8 (slimkit)")
    atomic_write_bytes(path, blob + stamp())
    return art


def stamp() -> bytes:
    """Bytes after the program (the loader reads the header's offsets and ignores the rest): slimkit's mark."""
    from .. import __version__

    return b"\0\0\0\0" + f"{GENERATED_TAG} {__version__}".encode()


class ExecuTorchSession(Session):
    def __init__(self, source, batch: int, threads: int = 1):
        from executorch.runtime import Runtime as ETRuntime

        said: list = []
        try:
            with quiet(stdout=False, capture=said):
                from executorch.extension.pybindings import portable_lib

                portable_lib._unsafe_reset_threadpool(int(threads))
                rt = ETRuntime.get()
                data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
                self.program = rt.load_program(bytes(data))
                self.method = self.program.load_method("forward")
        except RuntimeError as e:  # the runtime's own reason is in its log, not the exception
            lines = [ln.split("] ", 1)[-1] for ln in "".join(said).splitlines()  # the backend's lines, not probes
                     if "fail" in ln.lower() and ("Compiler" in ln or "Backend" in ln)]
            raise ExportError(f"ExecuTorch cannot load this program ({lines[0] if lines else first_line(e, 120)}); "
                              "export it to another runtime, or keep that layer's precision the same as its "
                              "neighbours'") from None
        self.batch = int(batch)

    def _args(self, inputs):
        n = int(inputs[0].shape[0])
        if n != self.batch:
            raise ExportError(f"this .pte was exported for batch {self.batch}, not {n}; export one for batch {n}")
        return [t.detach().contiguous() for t in inputs]

    def run(self, inputs):
        if int(inputs[0].shape[0]) != self.batch and self.batch == 1:  # score a split one sample at a time
            return np.concatenate([self.run(tuple(t[i:i + 1] for t in inputs)) for i in range(int(inputs[0].shape[0]))])
        out = self.method.execute(self._args(inputs))[0]
        return out.detach().float().numpy()

    def runner(self, inputs):
        args = self._args(inputs)
        return lambda: self.method.execute(args)


def ops(art: Artifact) -> list[str]:
    """The program's operators and delegates (``delegate:XnnpackBackend`` for what XNNPACK runs)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    pf = deserialize_pte_binary(Path(art.path).read_bytes())
    prog = getattr(pf, "program", pf)
    plan = prog.execution_plan[0]
    return sorted({o.name for o in plan.operators} | {f"delegate:{d.id}" for d in plan.delegates})


def version() -> str:
    from importlib.metadata import version as v

    return f"executorch {v('executorch')}"


register_runtime(Runtime("executorch", ".pte", "ExecuTorch, XNNPACK delegate", "executorch", PIP, export,
                         lambda a, threads=1: ExecuTorchSession(a.path, a.batch or 1, threads), ops, version))
