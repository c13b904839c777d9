"""LiteRT (the TensorFlow Lite runtime of Android): ``litert-torch`` converts the PyTorch module to ``.tflite``
(no TensorFlow needed), ``ai-edge-litert`` runs it (XNNPACK delegate, or the reference kernels for
``litert-builtin``).

int8 comes two ways. slimkit's own (a model quantized by ``quantize.int8_static``, ``quantize.qat`` or
``quantize.mixed_precision``): its simulation is lowered to quantize/dequantize ops with slimkit's scales and codes
(``quantize/lower.py``) and the converter fuses them into int8 kernels, so its calibrators, bias correction,
equalization and QAT carry over unchanged. The stock path for a float model: torch.export -> PT2E ``prepare_pt2e``
with litert-torch's ``PT2EQuantizer`` (symmetric per-channel weights, per-tensor activations) calibrated on the
data's calibration split -> ``convert_pt2e``. Either way a fully-int8 ``.tflite`` with int8 input and output. An
artifact is exported for one batch size (batch 1 for the phone case; one more for batch-N timing).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.context import eval_mode
from ..core.errors import ExportError, first_line
from ..core.io import GENERATED_TAG, atomic_write_bytes, scratch
from ..core.result import dequantized
from .base import Artifact, Runtime, Session, check_int8, export_form, quiet, register_runtime, stock_int8

PIP = "pip install 'slimkit[litert]' (litert-torch and ai-edge-litert)"


def _static_int8_config():
    from litert_torch.quantize import pt2e_quantizer, quant_config

    q = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    return q, quant_config.QuantConfig(pt2e_quantizer=q)


#: precisions of a float model in LiteRT: fp32, fully-int8 (PT2E, calibrated), and three weight formats made by
#: litert-torch's ai-edge-quantizer recipes: dynamic-range int8 (int8 weights, activations quantized at run time),
#: int8 weight-only (dequantized to float at load) and float16 weights; the last three serve embedding models,
#: whose activations static int8 does not capture (MiniLM: see docs/BENCHMARKS.md)
PRECISIONS = ("fp32", "int8", "int8-dynamic", "int8-weights", "fp16")


def _recipe(precision: str):
    from litert_torch.generative.quantize import quant_recipes

    return {"int8-dynamic": quant_recipes.full_dynamic_recipe, "int8-weights": quant_recipes.full_weight_only_recipe,
            "fp16": quant_recipes.full_fp16_recipe}[precision]()


def export(model, data, path, precision: str = "fp32", batch: int = 1) -> Artifact:
    """A ``.tflite`` for exactly ``batch`` samples (the converter bakes the batch into reshapes; export one per
    batch size you run). slimkit's quantized models (int8 static, QAT, mixed precision) lower with their own
    scales and codes (``precision`` is then int8, checked against slimkit's simulation before anything is written);
    slimkit's dynamic int8 (ONNX-only elsewhere) becomes LiteRT's dynamic-range int8 of its own codes, checked
    against its simulation; a float model is exported in fp32, or in int8 by the stock PT2E quantizer."""
    with quiet():
        import litert_torch

    sim, plain = model, dequantized(model)  # slimkit's dynamic int8: LiteRT's dynamic-range form of its codes
    if plain is not None:
        model, slimkit_int8, precision = plain, False, "int8-dynamic"
    else:
        model, slimkit_int8 = export_form(model, "LiteRT")
    if slimkit_int8:
        precision = "int8"
    example = data.example_inputs(batch)
    try:
        with eval_mode(model), torch.no_grad(), quiet():
            if precision not in PRECISIONS:
                raise ExportError(f"LiteRT exports {', '.join(PRECISIONS)}, not {precision!r}")
            if precision in ("int8-dynamic", "int8-weights", "fp16"):
                edge = litert_torch.convert(model, example, quant_config=_recipe(precision))
            elif precision == "int8":
                q, qc = _static_int8_config()
                prog = (model.slimkit_lower(data) if slimkit_int8  # litert-torch takes unfolded weights
                        else stock_int8(model, data, batch, q, fold_quantize=False))
                edge = litert_torch.convert(prog, example, quant_config=qc)
            else:
                edge = litert_torch.convert(model, example)
            with scratch() as d:
                tmp = Path(d) / "m.tflite"
                edge.export(str(tmp))
                blob = tmp.read_bytes()
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - the converter raises many types; name the failure in one line
        raise ExportError(conversion_error(e, model, example)) from None
    art = Artifact(Path(path), "litert", precision, batch, "slimkit" if slimkit_int8 or plain is not None else
                   ("stock" if precision != "fp32" else ""))
    if plain is not None:  # against slimkit's own simulation of its dynamic int8, before anything is written
        with scratch() as d:
            tmp = Path(d) / "m.tflite"
            tmp.write_bytes(blob)
            art.parity = check_int8(LiteRTSession(Artifact(tmp, "litert", precision, batch), 1, False), sim, data,
                                    "LiteRT dynamic-range int8 (slimkit's codes)", precision)
    if slimkit_int8:
        with scratch() as d:
            tmp = Path(d) / "m.tflite"
            tmp.write_bytes(blob)
            art.parity = check_int8(LiteRTSession(Artifact(tmp, "litert", "int8", batch), 1, False), model, data,
                                    "LiteRT int8 (slimkit)")
    atomic_write_bytes(path, blob + stamp())
    return art


def conversion_error(e: BaseException, model, example) -> str:
    """One line for a failed conversion: the operator litert-torch has no lowering for and where it comes from in
    the user's model (layer and source line, ``core.graph.locate_op``), or the converter's own first line."""
    import re

    from ..core.graph import locate_op

    text = str(e)
    op = re.search(r"Lowering not found: (\S+)", text)
    node = re.search(r"While executing %(\w+)", text)
    if op:
        name = op.group(1).rstrip(".,;:")
        where = locate_op(model, example, name, node.group(1) if node else "")
        return (f"LiteRT has no lowering for {name}{', used by ' + where if where else ''}; replace that operation "
                "in the model (or export it to ONNX Runtime or ExecuTorch instead); nothing was written")
    return (f"LiteRT conversion failed ({type(e).__name__}: {first_line(e, 160)}); an operator the converter does "
            "not support is the usual cause; nothing was written")


def stamp() -> bytes:
    """Bytes appended after the flatbuffer (readers ignore trailing data; LiteRT and TFLM load it unchanged): how a
    later run knows the file is slimkit's to replace."""
    from .. import __version__

    return b"\0\0\0\0" + f"{GENERATED_TAG} {__version__}".encode()


class LiteRTSession(Session):
    def __init__(self, art: Artifact, threads: int = 1, delegate: bool = True):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        kw = {} if delegate else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
        with quiet():
            self.it = Interpreter(model_path=str(art.path), num_threads=threads, **kw)
            self.it.allocate_tensors()
        self.inp = self.it.get_input_details()
        self.out = self.it.get_output_details()[0]
        self.batch = int(self.inp[0]["shape"][0])

    def _feed(self, inputs):
        n = int(inputs[0].shape[0])
        if n != self.batch:
            raise ExportError(f"this .tflite was exported for batch {self.batch}, not {n}; export one for batch {n}")
        for d, t in zip(self.inp, inputs):
            a = t.detach().cpu().numpy()
            if d["dtype"] in (np.int8, np.uint8):
                scale, zp = d["quantization"]
                info = np.iinfo(d["dtype"])
                a = np.clip(np.round(a / scale) + zp, info.min, info.max).astype(d["dtype"])
            else:
                a = a.astype(d["dtype"])
            self.it.set_tensor(d["index"], a)

    def _fetch(self) -> np.ndarray:
        y = self.it.get_tensor(self.out["index"])
        if self.out["dtype"] in (np.int8, np.uint8):
            scale, zp = self.out["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        return y.astype(np.float32)

    def run(self, inputs):
        if int(inputs[0].shape[0]) != self.batch and self.batch == 1:  # score a split one sample at a time
            return np.concatenate([self.run(tuple(t[i:i + 1] for t in inputs)) for i in range(int(inputs[0].shape[0]))])
        self._feed(inputs)
        self.it.invoke()
        return self._fetch()

    def runner(self, inputs):
        self._feed(inputs)
        return self.it.invoke


def ops(art: Artifact) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with quiet():
        it = Interpreter(model_path=str(art.path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return sorted({o["op_name"] for o in it._get_ops_details()})


def tensor_types(art: Artifact) -> dict[str, str]:
    """Tensor name -> dtype for the weights and activations of the artifact (int8 checks)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with quiet():
        it = Interpreter(model_path=str(art.path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return {d["name"]: np.dtype(d["dtype"]).name for d in it.get_tensor_details()}


def version() -> str:
    from importlib.metadata import version as v

    return f"ai-edge-litert {v('ai-edge-litert')}, litert-torch {v('litert-torch')}"


register_runtime(Runtime("litert", ".tflite", "LiteRT (TensorFlow Lite), XNNPACK delegate", "ai_edge_litert", PIP,
                         export, lambda a, threads=1: LiteRTSession(a, threads, True), ops, version,
                         precisions=PRECISIONS))
register_runtime(Runtime("litert-builtin", ".tflite", "LiteRT, reference (builtin) kernels", "ai_edge_litert", PIP,
                         export, lambda a, threads=1: LiteRTSession(a, threads, False), ops, version,
                         precisions=PRECISIONS))
