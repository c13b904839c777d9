"""Static post-training quantization (int8 weights and activations) of
Conv1d/Conv2d/Linear models, traced with torch.fx, exported as ONNX QDQ that
ONNX Runtime executes with its integer kernels (QLinearConv, QGemm, ...)."""
from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import io
from typing import ClassVar, Optional

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ..core.checks import check_finite_weights
from ..core.config import Config, check_choice, check_range, Tunable
from ..core.context import Context, removing
from ..core.result import Compressed
from ..core.errors import ConfigError, DataError, ExportError
from ..export.onnx import write_onnx
from ..core.progress import track
from ..core.registry import register_technique
from ..core.targets import Targets
from ..evaluate.environment import cpu_info
from ..core.data import DataBundle
from ..core import graph as G
from .calibrate import CALIBRATORS
from .modules import ActQuant, InputQuantLayer, OutputQuant, QGroup, QuantLayer, constant_qparams
from .scheme import QScheme

INT8_KERNELS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
                "DynamicQuantizeMatMul", "QAttention", "MatMulNBits", "DynamicQuantizeLinear", "DynamicQuantizeLSTM"}


def weight_range_for_cpu() -> tuple[str, str]:
    """7-bit weights on AVX2 without VNNI, where ONNX Runtime's u8 x s8 kernels
    (VPMADDUBSW) add pairs of products in int16 and saturate; full 8 bits else."""
    c = cpu_info()
    if c.get("avx512_vnni") or c.get("avx_vnni"):
        return "full", "CPU has VNNI: full 8-bit weights"
    if c.get("avx2"):
        return "reduced", ("CPU has AVX2 without VNNI: weights use 7 bits (reduce_range), because ONNX Runtime's u8 x s8 "
                           "kernels saturate int16 pair sums (VPMADDUBSW) with full 8-bit weights")
    return "full", "no AVX2: full 8-bit weights"


@dataclasses.dataclass
class StaticQuantConfig(Config):
    """int8 static PTQ: per-channel weights, per-tensor u8 activations."""

    TUNABLE: ClassVar = {"calibrator": Tunable(choices=("auto", "minmax", "percentile", "mse")),
                         "per_channel": Tunable(choices=(True, False)),
                         "float_first": Tunable(choices=(False, True))}

    calibrator: str = "auto"
    percentile: float = 99.99
    per_channel: bool = True
    weight_bits: int = 8
    weight_range: str = "auto"  # auto | full | reduced (7-bit)
    fold_bn: bool = True
    equalize: bool = False  # cross-layer equalization (for depthwise-conv nets)
    bias_correction: bool = True
    quantize_output: bool = False  # quantize the logits too
    calibration_samples: int = 256
    per_layer: dict = dataclasses.field(default_factory=dict)  # layer -> calibrator
    per_layer_bits: dict = dataclasses.field(default_factory=dict)  # layer -> weight bits (2-8), or 32 = keep float
    # layers at <= 4 bits: packed INT4 on disk (half the bytes; plain ONNX Runtime then re-expands those weights at
    # every run, see onnx_passes.pack_low_bit_weights) or int8 containers (no per-run cost, the default here)
    pack_4bit: bool = False
    # keep the first layer (the one the model's input reaches first) in float: a convolution over one input
    # channel becomes, in LiteRT, a depthwise convolution with a channel multiplier whose int8 XNNPACK kernel ran
    # 2.6x slower than its fp32 one on this machine (docs/BENCHMARKS.md); the rest of the model stays int8
    float_first: bool = False
    # layers that stay float whatever else is set (their input and weights are not quantized)
    keep_float: list = dataclasses.field(default_factory=list)
    # a runtime (litert, litert-builtin, executorch): each target layer's int8 kernel is timed against its float
    # kernel there, alone at batch 1, and the layers whose int8 takes >= 1.1x their float time stay float. On this
    # CPU (AVX2, no VNNI) LiteRT's int8 Linear ran in 0.26x its float time and its convolutions in 1.3x-5.7x
    # (docs/BENCHMARKS.md)
    int8_where_faster: str = ""
    targets: Targets = dataclasses.field(default_factory=lambda: Targets(types=["Linear", "Conv1d", "Conv2d"]))
    # how the model is seen: torch.fx where it traces, else torch.export (auto); or force one (fx | export)
    graph: str = "auto"

    @classmethod
    def tunable_in(cls, runtime: str) -> dict:
        """On a runtime that can time a layer's int8 against its float (LiteRT, ExecuTorch), the planner also draws
        whether to keep float the layers that run slower in int8 there."""
        from ..evaluate.layer_speed import RUNTIMES

        return {"int8_where_faster": Tunable(choices=("", runtime))} if runtime in RUNTIMES else {}

    def validate(self) -> None:
        check_choice("graph", self.graph, ("auto", "fx", "export"))
        check_choice("calibrator", self.calibrator, CALIBRATORS + ("auto",))
        check_range("percentile", self.percentile, 90, 100, hi_open=False)
        check_range("weight_bits", self.weight_bits, 2, 8)
        check_choice("weight_range", self.weight_range, ("auto", "full", "reduced"))
        if self.calibration_samples < 2:
            raise ConfigError(f"calibration_samples={self.calibration_samples}: need at least 2")
        for k, v in self.per_layer.items():
            check_choice(f"per_layer[{k}]", v, CALIBRATORS + ("auto",))
        for k, v in self.per_layer_bits.items():
            if v != 32:
                check_range(f"per_layer_bits[{k}]", v, 2, 8)
        if isinstance(self.targets, dict):
            self.targets = Targets.from_dict(self.targets)
        if self.int8_where_faster:
            from ..evaluate.layer_speed import check_runtime

            check_runtime(self.int8_where_faster)


class QuantizedModel(Compressed):
    """A fake-quant model (PyTorch simulation of int8 execution) that exports
    to an int8 QDQ ONNX file (``slimkit_export``)."""

    # its PyTorch forward is the fake-quant simulation (float arithmetic): PyTorch timings of it are not a
    # deployment figure; the ONNX file is
    slimkit_simulated = True

    def __init__(self, gm: fx.GraphModule, info: dict):
        super().__init__()
        self.gm = gm
        self.info = info

    def forward(self, *x):
        return self.gm(*x)

    @property
    def slimkit_metrics(self) -> dict:
        return {"quantization": self.info}

    def act_quants(self):
        return [m for m in self.gm.modules() if isinstance(m, ActQuant)]

    def groups(self) -> list[QGroup]:
        """Distinct activation quantization groups (several ActQuants may share one)."""
        return list({id(a.group): a.group for a in self.act_quants()}.values())

    def ranges(self) -> dict:
        """Calibrated activation qparams by tensor name, to reuse in a re-prepared model."""
        return {g.name: (g.scale.clone(), g.zero_point.clone(), g.calibrator) for g in self.groups()}

    def layers(self):
        return {n: m for n, m in self.gm.named_modules() if isinstance(m, QuantLayer)}

    def set_mode(self, mode: str) -> None:
        for a in self.act_quants():
            a.mode = mode
        for q in self.layers().values():
            q.enabled = mode == "quant"

    def slimkit_export(self, data: DataBundle, path, **kw):
        return export_qdq(self, data, path, **kw)

    def slimkit_lower(self, data: DataBundle, **kw) -> nn.Module:
        """The same int8 model as quantize/dequantize ops (PT2E form) for LiteRT, TFLM and ExecuTorch."""
        from .lower import lower_quantized

        return lower_quantized(self, data, **kw)


def _calibration_split(data: DataBundle, n: int):
    split = data.calib
    if split is None or len(split) < 2:
        raise DataError(f"calibration needs at least 2 samples; {data.name!r} gives {0 if split is None else len(split)}")
    return split.slice(0, min(n, len(split)))


def capture_for_quantization(model: nn.Module, cfg: StaticQuantConfig, example) -> Optional[G.Captured]:
    """How ``prepare_static`` sees the model: None where torch.fx traces it (graph-mode placement: quantizers
    shared across data-movement ops, outputs quantized after their ReLU: the zoo's figures); otherwise (Hugging
    Face models, control flow on shapes, ``.pt2`` programs) its torch.export capture with ``nn.MultiheadAttention``
    split into Linear layers. Computed once per model by callers that prepare many plans (mixed precision)."""
    if cfg.graph == "fx" or (cfg.graph == "auto" and _fx_reaches_all(model, cfg)):
        return None
    if example is None:
        raise ConfigError(f"{type(model).__name__} cannot be traced by torch.fx and no example input was given "
                          "to capture it with torch.export")
    return G.capture(model, example, what="static quantization", split_attention=True)


def _fx_reaches_all(model: nn.Module, cfg: StaticQuantConfig) -> bool:
    """torch.fx traces the model and every Conv/Linear the targets select is a module call in its graph (fx keeps
    torch.nn modules such as ``nn.TransformerEncoder`` whole, so their Linear layers would stay unreachable)."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - not traceable: capture with torch.export
        return False
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    return all(n in called for n, m in cfg.targets.select(model, strict=False)
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and cfg.per_layer_bits.get(n, 0) < 16)


def first_layer(model: nn.Module, cfg: StaticQuantConfig, example=None) -> str:
    """The Conv/Linear among ``cfg.targets`` that runs first on ``example`` (forward hooks on a copy); without an
    example, the first one in module order. '' when there is none."""
    names = [n for n, m in cfg.targets.select(model, strict=False) if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    if not names or example is None:
        return names[0] if names else ""
    m = copy.deepcopy(model).eval()
    order: list[str] = []
    hooks = [m.get_submodule(n).register_forward_pre_hook(lambda mod, args, n=n: order.append(n)) for n in names]
    with removing(hooks), torch.no_grad():
        m(*example)
    return order[0] if order else names[0]


def prepare_static(model: nn.Module, cfg: StaticQuantConfig, keep_inputs: int = 0, *, example=None,
                   captured="auto") -> QuantizedModel:
    """The fake-quant model of ``model`` under ``cfg``; ``captured``: ``capture_for_quantization``'s result
    (computed here when "auto"; needs ``example``)."""
    check_finite_weights(model)
    first = first_layer(model, cfg, example) if cfg.float_first else ""
    keep = list(dict.fromkeys(cfg.keep_float + ([first] if first else [])))
    for name in keep:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"keep_float names {name!r}, which is not a layer of {type(model).__name__}") from None
    if keep:
        cfg = dataclasses.replace(cfg, per_layer_bits={**cfg.per_layer_bits, **{n: 32 for n in keep}})
    qm = _prepare_static(model, cfg, keep_inputs, example, captured)
    if first:
        qm.info["float_first"] = first
    if cfg.keep_float:
        qm.info["keep_float"] = list(cfg.keep_float)
    return qm


def keep_float_where_slower(model: nn.Module, cfg: StaticQuantConfig, ctx: Context) \
        -> tuple[StaticQuantConfig, dict, Optional[tuple[QuantizedModel, Context]]]:
    """``int8_where_faster``: time each target layer alone in float and int8 in that runtime (calibration inputs,
    batch 1) and add to ``keep_float`` the layers whose int8 takes at least ``layer_speed.SLOWER`` times their float
    time; the table of timings comes back too (``note_coverage`` files it in the model's info). Where the whole
    programs were built to confirm it, the winner comes back as well (int8 static PTQ with the returned config,
    and the context its notes went to), so that int8 static need not build it again."""
    if not cfg.int8_where_faster:
        return cfg, {}, None
    from ..evaluate.layer_speed import SLOWER, int8_speedups

    names = [n for n, m in cfg.targets.select(model, strict=False) if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))
             and n not in cfg.keep_float and cfg.per_layer_bits.get(n) != 32]
    table = int8_speedups(model, ctx.data, names, cfg.int8_where_faster)
    slow = [n for n, r in table.items() if r["ratio"] >= SLOWER]
    ratios = [f"{n} {r['ratio']:.2f}x" for n, r in table.items()]
    if len(slow) == len(table) and table:
        raise ConfigError(f"no layer of {type(model).__name__} runs faster in int8 than in float in "
                          f"{cfg.int8_where_faster} on this CPU (int8 / float: {', '.join(ratios[:4])}); the float "
                          "model is the faster one: export it without int8")
    whole, built = "", None
    if slow:  # confirmed on whole programs: a float layer inside an int8 program may run in another form than alone
        from ..evaluate.layer_speed import program_times

        base = dataclasses.replace(cfg, int8_where_faster="")
        ctxs = {k: Context(data=ctx.data, seed=ctx.seed, stage=ctx.stage) for k in ("float", "int8")}
        progs = {"float": int8_static(model, dataclasses.replace(base, keep_float=cfg.keep_float + slow),
                                      ctxs["float"]),
                 "int8": int8_static(model, base, ctxs["int8"])}
        t = program_times(progs, ctx.data, cfg.int8_where_faster)
        table = {**table, "_whole_program_ms": {"with_float_layers": round(t["float"], 4), "all_int8": round(t["int8"], 4)}}
        whole = (f"; whole programs at batch 1: with them float {t['float']:.4f} ms, all int8 {t['int8']:.4f} ms")
        if t["float"] >= t["int8"]:
            whole += f": the all-int8 program is faster, so {', '.join(slow)} stay int8"
            slow = []
        won = "float" if slow else "int8"
        built = (progs[won], ctxs[won])
    ctx.note(f"int8_where_faster={cfg.int8_where_faster}: int8 / float time per layer alone at batch 1: "
             + ", ".join(ratios) + whole + (f"; {len(slow)} layer(s) stay float ({', '.join(slow)})" if slow
                                            else "; every layer is int8"))
    return dataclasses.replace(cfg, keep_float=cfg.keep_float + slow, int8_where_faster=""), table, built


def _prepare_static(model: nn.Module, cfg: StaticQuantConfig, keep_inputs: int, example, captured) -> QuantizedModel:
    if captured == "auto":
        captured = capture_for_quantization(model, cfg, example)
    if captured is not None:
        return _prepare_captured(model, cfg, keep_inputs, captured)
    if cfg.fold_bn:
        gm, folded = G.fold_batchnorm(model)
    else:
        gm, folded = G.trace(copy.deepcopy(model).eval()), []
    if cfg.equalize:
        from .equalize import cross_layer_equalize

        pairs = cross_layer_equalize(gm)
    else:
        pairs = []
    wr, note, wbits, wscheme_for, ascheme = _schemes(cfg)
    list(cfg.targets.select(model))  # names must exist in the user's model (BN names vanish from gm)
    selected = {n for n, _ in cfg.targets.select(gm, strict=False)}
    groups: dict[fx.Node, QGroup] = {}
    aq_nodes: dict[fx.Node, fx.Node] = {}  # source node -> ActQuant node inserted after it
    counter = [0]
    graph = gm.graph

    def new_aq(after: fx.Node, group: QGroup, keep: int = 0) -> fx.Node:
        counter[0] += 1
        name = f"act_quant_{counter[0]}"
        aq = ActQuant(group, keep)
        if group.owner is None:
            group.set_owner(aq)
        gm.add_module(name, aq)
        with graph.inserting_after(after):
            n = graph.call_module(name, (after,))
        return n

    def group_of(src: fx.Node) -> QGroup:
        if src in groups:
            return groups[src]
        if G.is_passthrough(gm, src) and isinstance(src.args[0], fx.Node):
            inner = src.args[0]
            if inner.op == "call_module" and isinstance(G.module_of(gm, inner), ActQuant):
                g = G.module_of(gm, inner).group
            else:
                g = group_of(inner)
            groups[src] = g
            return g
        g = QGroup(ascheme, src.name)
        groups[src] = g
        return g

    def quantize_tensor(src: fx.Node, keep: int = 0) -> fx.Node:
        """Fake-quantize the value of ``src`` for all its users; return the new node."""
        if src.op == "call_module" and isinstance(G.module_of(gm, src), ActQuant):
            return src
        if src in aq_nodes:
            return aq_nodes[src]
        users = list(src.users)
        aq = new_aq(src, group_of(src), keep)
        for u in users:
            u.replace_input_with(src, aq)
        aq_nodes[src] = aq
        groups[aq] = groups[src]
        return aq

    quantized = []
    output_nodes = {a for n in graph.nodes if n.op == "output" for a in _flatten_args(n.args)}
    for node in list(graph.nodes):
        if node.op != "call_module" or node.target not in selected:
            continue
        mod = G.module_of(gm, node)
        if not isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        if cfg.per_layer_bits.get(node.target, 0) >= 16:
            continue  # kept in float by the precision plan
        qlayer = QuantLayer(mod, wscheme_for(node.target))
        G.set_module(gm, node.target, qlayer)
        quantized.append(node.target)
        src = node.args[0]
        if isinstance(src, fx.Node):
            # an input quantizer right in front of the layer (sharing qparams through data-movement ops)
            if src.op == "call_module" and isinstance(G.module_of(gm, src), ActQuant):
                aq = src
            else:
                aq = new_aq(src, group_of(src), keep_inputs)
                node.replace_input_with(src, aq)
                groups[aq] = groups[src]
            G.module_of(gm, aq).consumer = node.target
            qlayer.feeds_from(G.module_of(gm, aq))
        out = node
        users = list(node.users)
        if len(users) == 1 and G.is_relu(gm, users[0]):
            out = users[0]
        if out in output_nodes and not cfg.quantize_output:
            continue
        quantize_tensor(out)
    if not quantized:
        raise ConfigError("no Conv1d/Conv2d/Linear layer matched the targets; nothing to quantize")
    graph.lint()
    gm.recompile()
    info = _info(cfg, wr, note, wbits, quantized, folded, "torch.fx")
    info["equalized_pairs"] = pairs
    info["skipped_layers"] = _skipped(model, quantized, cfg, None)
    return QuantizedModel(gm, info)


def _schemes(cfg: StaticQuantConfig):
    wr = cfg.weight_range
    note = ""
    if wr == "auto":
        wr, note = weight_range_for_cpu()
    wbits = min(cfg.weight_bits, 7) if wr == "reduced" else cfg.weight_bits

    def wscheme_for(name: str) -> QScheme:
        b = cfg.per_layer_bits.get(name, cfg.weight_bits)
        b = min(b, 7) if wr == "reduced" else b
        return QScheme(bits=b, symmetric=True, signed=True,
                       granularity="per_channel" if cfg.per_channel else "per_tensor", axis=0, narrow=True)
    return wr, note, wbits, wscheme_for, QScheme(bits=8, symmetric=False, signed=False)


def _info(cfg, wr, note, wbits, quantized, folded, graph) -> dict:
    return {"scheme": "int8 static: weights s8 symmetric " + ("per-channel" if cfg.per_channel else "per-tensor")
                      + f" ({wbits}-bit codes), activations u8 asymmetric per-tensor",
            "weight_bits": {n: (min(cfg.per_layer_bits.get(n, cfg.weight_bits), 7) if wr == "reduced"
                                else cfg.per_layer_bits.get(n, cfg.weight_bits)) for n in quantized},
            "weight_range": wr, "weight_range_reason": note, "folded_batchnorm": folded, "graph": graph,
            "quantized_layers": quantized, "pack_4bit": bool(cfg.pack_4bit)}


_RNN = (nn.GRU, nn.LSTM, nn.RNN)


def _skipped(model: nn.Module, quantized: list, cfg: StaticQuantConfig, cap) -> dict:
    """Weight-bearing layers of the user's model that stayed float, each with the reason (the report and the
    console say so: a technique that touched part of what it was asked to must say which part)."""
    done = set(quantized)
    out = {}
    for name, m in model.named_modules():
        if not name or name in done or name.rpartition(".")[0] in done:
            continue
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            if cfg.per_layer_bits.get(name, 0) >= 16:
                continue  # the precision plan keeps it float: a decision, not a gap
            if cap is not None and name not in cap.calls:
                reader = cap.read_by_parent(name)
                out[name] = (f"{type(m).__name__} whose weight is read directly by {reader}"
                             if reader else f"{type(m).__name__} the model never calls")
            elif any(name == n or name.startswith(n + ".") for n, _ in cfg.targets.select(model, strict=False)):
                out[name] = f"{type(m).__name__} not in a quantizable position"
        elif isinstance(m, _RNN):
            out[name] = (f"{type(m).__name__}: no int8 static kernel in ONNX Runtime; quantize.int8_dynamic stores "
                         "its weights in int8")
        elif isinstance(m, nn.MultiheadAttention) and cap is None:
            out[name] = "MultiheadAttention: its packed projections are not Linear calls under torch.fx"
    for owner, op in G.program_recurrent_ops(model).items():
        out[owner] = (f"aten.{op} (a recurrent op of the .pt2 program): no int8 static kernel in ONNX Runtime; "
                      "quantize.int8_dynamic stores its weights in int8")
    return out


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU)


def _place_output_quant(m: nn.Module, cap, quantized: list, folded: set, ascheme, cfg) -> list[str]:
    """Quantize a layer's output (after its activation module, when it has one of its own) where that output goes
    to float ops (a residual add, a pool) instead of straight into other quantized layers: without that Q, ONNX
    Runtime keeps the layer in float behind a DequantizeLinear. Not the model's output (``quantize_output``)."""
    qset = set(quantized)
    anchors = {}
    for node in cap.graph.nodes:
        if node.op == "call_function" and G.op_name(node) in G.LAYER_OPS:
            anchors.setdefault(cap.owner(node), node)
    placed = []
    for name in quantized:
        node = anchors.get(name)
        if node is None:
            continue
        target = name
        while len(node.users) == 1:
            nxt = next(iter(node.users))
            owner = cap.owner(nxt)
            if nxt.op != "call_function" or nxt.args[0] is not node:
                break
            if owner in folded:  # the BatchNorm folded into this layer: its op is gone from the model
                node = nxt
                continue
            mod = m.get_submodule(owner) if owner and owner in cap.calls else None
            if isinstance(mod, _ACTIVATIONS) and len(cap.calls[owner].nodes) == 1:  # its own, called once
                node, target = nxt, owner
            break
        users = list(node.users)
        if any(u.op == "output" for u in users) and not cfg.quantize_output:
            continue
        if users and all(u.op == "call_function" and cap.owner(u) in qset and u.args[0] is node
                         and G.op_name(u) in G.LAYER_OPS for u in users):
            continue  # the next layers' input quantizers already put a Q here
        group = QGroup(ascheme, f"{target}.output")
        if target == name:
            layer = m.get_submodule(name)
            layer.output_quant = ActQuant(group)
            group.set_owner(layer.output_quant)
        else:
            G.set_module(m, target, OutputQuant(m.get_submodule(target), group))
        placed.append(target)
    return placed


def _prepare_captured(model: nn.Module, cfg: StaticQuantConfig, keep_inputs: int, cap) -> QuantizedModel:
    """Module-level placement on a torch.export capture: BatchNorm folded into the convolution it follows (pairs
    from the ATen graph), every called Conv/Linear of the targets wrapped to fake-quantize its input and weight."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(cap.model).eval()
    folded = []
    if cfg.fold_bn:
        for conv, bn in cap.conv_bn_pairs():
            G.set_module(m, conv, fuse_conv_bn_eval(m.get_submodule(conv), m.get_submodule(bn)))
            G.set_module(m, bn, nn.Identity())
            folded.append(bn)
    wr, note, wbits, wscheme_for, ascheme = _schemes(cfg)
    list(cfg.targets.select(model))  # names must exist in the user's model
    selected = {n for n, _ in cfg.targets.select(m, strict=False)}
    quantized = []
    for name in cap.called((nn.Conv1d, nn.Conv2d, nn.Linear)):
        if name not in selected or cfg.per_layer_bits.get(name, 0) >= 16:
            continue
        G.set_module(m, name, InputQuantLayer(m.get_submodule(name), wscheme_for(name), QGroup(ascheme, name),
                                              keep_inputs))
        m.get_submodule(name).input_quant.consumer = name
        quantized.append(name)
    if not quantized:
        raise ConfigError("no Conv1d/Conv2d/Linear layer matched the targets; nothing to quantize")
    outputs = _place_output_quant(m, cap, quantized, set(folded), ascheme, cfg)
    info = _info(cfg, wr, note, wbits, quantized, folded, "torch.export")
    info["output_quantizers"] = outputs
    info["split_attention"] = cap.split_attention
    if cfg.equalize:
        info["equalize_skipped"] = "cross-layer equalization needs a torch.fx graph; this model was captured by torch.export"
    info["skipped_layers"] = {k: v for k, v in _skipped(m, quantized, cfg, cap).items()
                              if not any(k.startswith(s + ".") for s in cap.split_attention)}
    return QuantizedModel(m, info)


def _flatten_args(a):
    if isinstance(a, (list, tuple)):
        for x in a:
            yield from _flatten_args(x)
    elif isinstance(a, dict):
        for x in a.values():
            yield from _flatten_args(x)
    elif isinstance(a, fx.Node):
        yield a


@torch.no_grad()
def calibrate(qm: QuantizedModel, data: DataBundle, cfg: StaticQuantConfig, batch_size: int = 64,
              ranges: Optional[dict] = None) -> None:
    """Set every activation range from calibration data; or, given ``ranges``
    from ``QuantizedModel.ranges()`` of a model prepared from the same float
    model (activation ranges do not depend on the weight bits), reuse them."""
    split = _calibration_split(data, cfg.calibration_samples)
    if ranges is not None and all(g.name in ranges for g in qm.groups()):
        for g in qm.groups():
            scale, zp, g.calibrator = ranges[g.name]
            g.scale.copy_(scale)
            g.zero_point.copy_(zp)
        qm.info["calibrators"] = {g.name: g.calibrator for g in qm.groups()}
        qm.info["calibration_samples"] = len(split)
        qm.set_mode("quant")
        return
    qm.set_mode("observe")
    for x, _ in track(list(split.batches(batch_size)), "calibrate"):
        qm(*x)
    layers, aqs = qm.layers(), qm.act_quants()
    members = collections.defaultdict(list)
    for a in aqs:
        members[id(a.group)].append(a)
    for a in aqs:
        g = a.group
        if g.owner is not a:
            continue
        method = cfg.per_layer.get(a.consumer or "", cfg.calibrator)
        if method == "auto":
            method = _auto_choose(g, members[id(g)], layers, cfg)
        lo, hi = g.observer.range(method, percentile=cfg.percentile)
        g.set_range(lo, hi)
        g.calibrator = method
    for a in qm.act_quants():
        a.inputs = []
        a.group.observer.samples = []
    qm.info["calibrators"] = {g.name: g.calibrator for g in qm.groups()}
    qm.info["calibration_samples"] = len(split)
    qm.set_mode("quant")


def _auto_choose(g: QGroup, members, layers, cfg) -> str:
    """Per tensor, the calibrator whose range gives the smallest error at the
    output of the layer(s) it feeds (or of the tensor itself)."""
    best, best_err = "minmax", float("inf")
    # what does not depend on the candidate range is computed once, not once per calibrator: each fed layer's float
    # output, that output's power, and the weight it runs with (as ``QuantLayer.forward`` in this mode: the bias float)
    fed = []
    for m in members:
        if m.consumer and m.inputs:
            layer, x = layers[m.consumer], torch.cat(m.inputs)
            ref = layer.layer(x)
            fed.append((layer, x, ref, layer.qweight(), ref.pow(2).mean().clamp(min=1e-12)))
    v = None if fed else torch.from_numpy(g.observer.values())
    tried = {}  # calibrators often agree (minmax and moving_minmax on one batch): one error per distinct range
    for method in CALIBRATORS:
        lo, hi = g.observer.range(method, percentile=cfg.percentile)
        g.set_range(lo, hi)
        key = (float(g.scale), int(g.zero_point))
        if key not in tried:
            err = 0.0
            for layer, x, ref, w, power in fed:
                xq = torch.fake_quantize_per_tensor_affine(x, key[0], key[1], 0, 255)
                err += float((layer._run(xq, w, layer.layer.bias) - ref).pow(2).mean() / power)
            if v is not None:
                err = float((torch.fake_quantize_per_tensor_affine(v, key[0], key[1], 0, 255) - v).pow(2).mean())
            tried[key] = err
        if tried[key] < best_err:
            best, best_err = method, tried[key]
    return best


def _channel_mean(layer: QuantLayer, out: torch.Tensor) -> torch.Tensor:
    """Per output channel, the mean of ``out``: channels are dim 1 of a convolution's output and the last dim of a
    Linear's (B, ..., features)."""
    ch = out.ndim - 1 if isinstance(layer.layer, nn.Linear) else 1
    return out.mean(dim=[d for d in range(out.ndim) if d != ch])


def _shift_bias(layer: QuantLayer, delta: torch.Tensor) -> float:
    lin = layer.layer
    if lin.bias is None:
        lin.bias = nn.Parameter(torch.zeros(delta.shape[0]))
    lin.bias.data -= delta
    return float(delta.abs().max())


@torch.no_grad()
def bias_correct(qm: QuantizedModel, data: DataBundle, cfg: StaticQuantConfig) -> dict:
    """Empirical bias correction (Nagel et al., 2019): for each quantized layer in the order the model runs them,
    shift its bias by its mean output error against the float model, measured with every earlier layer already
    corrected. Two passes: one in float (mode ``off``, before any bias moves) keeps each layer's per-channel output
    mean, one quantized corrects each layer inside the pass (a forward hook shifts the bias and hands the layers
    after it the output recomputed with it), so the cost does not grow with the depth and no activations are kept.
    Every output the pass hands on is what the corrected model computes, so afterwards each layer's mean error is
    zero (up to the int32 bias grid). A layer called more than once (a shared module) has one bias for all its
    calls: it is corrected on its first call, and its later calls run with that bias."""
    x_all = _calibration_split(data, cfg.calibration_samples).inputs
    layers = qm.layers()
    refs, shifts = {}, {}  # per layer: the float output's per-channel mean (its first call's), the shift applied

    def keep(name, mod, inputs, out):
        if name not in refs:
            refs[name] = _channel_mean(mod, out.detach())

    def correct(name, mod, inputs, out):
        if name in shifts:  # a shared layer's later call: it already runs with its corrected bias
            return None
        shifts[name] = _shift_bias(mod, _channel_mean(mod, out.detach()) - refs[name])
        return mod.forward(*inputs)  # what the corrected layer gives: the layers after it are measured on this

    qm.set_mode("off")
    with removing([m.register_forward_hook(functools.partial(keep, n)) for n, m in layers.items()]):
        qm(*x_all)
    qm.set_mode("quant")
    with removing([m.register_forward_hook(functools.partial(correct, n)) for n, m in layers.items() if n in refs]):
        qm(*x_all)
    return shifts


# ----------------------------------------------------------------------------- export

def export_qdq(qm: QuantizedModel, data: DataBundle, path, *, opset: int = 17, check: bool = True):
    """Export the fake-quant model as int8 QDQ ONNX: int8 weight initializers,
    int32 biases. Checks (1) ONNX Runtime with graph optimisations off (pure
    QDQ arithmetic) matches the PyTorch fake-quant model tightly, and (2) the
    optimised int8 session agrees on the task (top-1 / cosine)."""
    import onnx

    from ..export.onnx import check_parity, onnx_bytes
    from .onnx_passes import fold_weight_quantize, optimized_op_types, pack_low_bit_weights, quantize_biases

    qm.eval()
    try:
        if G.holds_program(qm):  # sizes computed from the batch stay symbolic: the torch.export-based exporter
            with constant_qparams(qm):
                blob = onnx_bytes(qm, data.example_inputs(2), data.input_names, data.dynamic_axes, opset)
        else:
            blob = _torchscript_qdq(qm, data, opset)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"int8 ONNX export failed: {(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}") from None
    model = onnx.load_from_string(blob)
    fold_weight_quantize(model)
    quantize_biases(model)
    packed = pack_low_bit_weights(model) if qm.info.get("pack_4bit", False) else 0
    if packed:
        qm.info["packed_4bit_weights"] = packed
    blob = model.SerializeToString()
    ops = optimized_op_types(blob)
    kernels = sorted({o for o in ops if o in INT8_KERNELS})
    qm.info["ort_int8_kernels"] = kernels
    qm.info["ort_float_compute_ops"] = sorted({o for o in ops if o in ("Conv", "Gemm", "MatMul", "FusedConv",
                                                                      "FusedGemm", "FusedMatMul")})
    parity = None
    if check:
        tight = _qdq_parity(qm, blob, data)
        qm.info["parity_qdq_reference"] = tight.to_dict()
        if not tight.ok:
            raise ExportError(f"int8 ONNX does not match the fake-quant model: max abs err {tight.max_abs_err:.3g} "
                              f"(allowed {tight.atol:.3g}), lowest per-sample cosine {tight.cosine:.4f} (needs "
                              f"{tight.min_cosine}); nothing was written")
        parity = check_parity(qm, blob, data, atol=float("inf"), min_cosine=0.99)
        qm.info["parity_int8_kernels"] = parity.to_dict()
        if not parity.ok or (parity.agree_top1 is not None and parity.agree_top1 < 0.95):
            raise ExportError(f"int8 ONNX Runtime output disagrees with PyTorch (cosine {parity.cosine:.4f}, top-1 "
                              f"agreement {parity.agree_top1}); nothing was written")
    write_onnx(path, blob)
    return parity


def _torchscript_qdq(qm: QuantizedModel, data: DataBundle, opset: int) -> bytes:
    """The TorchScript exporter writes the fake-quant ops as QuantizeLinear/DequantizeLinear with their scales."""
    import contextlib
    import warnings

    buf = io.BytesIO()
    axes = {n: {0: "batch", **data.dynamic_axes.get(n, {})} for n in data.input_names}
    axes["output"] = {0: "batch"}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(qm, data.example_inputs(2), buf, input_names=list(data.input_names), output_names=["output"],
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    return buf.getvalue()


@torch.no_grad()
def _qdq_parity(qm, blob: bytes, data: DataBundle):
    from ..export.onnx import Parity, ort_run, ort_session, output_error

    sess = ort_session(blob, threads=2, optimize=False)
    split = data.test.slice(0, min(64, len(data.test)))
    ref = qm(*split.inputs).float().numpy()
    got = ort_run(sess, split.inputs)
    err, cos = output_error(ref, got)
    # the two differ only by float rounding at quantization boundaries (the int32 bias grid is simulated): allow a
    # few output quanta. The absolute bound is the tight check; the per-sample cosine floor is 0.99, because a
    # sample whose logits are all near zero shows a low cosine for a difference of one quantum.
    atol = 1e-3 * max(1.0, float(np.abs(ref).max())) + 0.02 * float(np.abs(ref).max())
    return Parity(err, cos, len(split), atol, 0.99)


# ----------------------------------------------------------------------------- technique

def note_speed(qm: QuantizedModel, speed: Optional[dict]) -> None:
    """File the per-layer int8 / float timings (and the whole-program confirmation) in the model's info."""
    if speed:
        qm.info["int8_speed"] = {k: v for k, v in speed.items() if not k.startswith("_")}
        if "_whole_program_ms" in speed:  # the confirmation on whole programs (keep_float_where_slower)
            qm.info["int8_whole_program_ms"] = speed["_whole_program_ms"]


def note_coverage(qm: QuantizedModel, ctx: Context, speed: Optional[dict] = None) -> None:
    """Say on the console and in the report which weight-bearing layers stayed float, and why; ``speed``: the
    per-layer timings behind ``int8_where_faster`` (``keep_float_where_slower``), kept in the model's info."""
    note_speed(qm, speed)
    skipped = qm.info.get("skipped_layers") or {}
    if qm.info.get("float_first"):
        ctx.note(f"float_first: the first layer, {qm.info['float_first']}, stays float (its input and weights are "
                 "not quantized)")
    if qm.info.get("graph") == "torch.export":
        ctx.note("torch.fx could not trace this model: it was captured with torch.export and quantized layer by "
                 "layer" + (f" ({len(qm.info['split_attention'])} MultiheadAttention split into Linear layers)"
                            if qm.info.get("split_attention") else ""))
    if skipped:
        kinds = collections.Counter(skipped.values())
        ctx.warn(f"quantized {len(qm.info['quantized_layers'])} layers; left {len(skipped)} in float: "
                 + "; ".join(f"{n}x {w}" for w, n in kinds.items()))


@register_technique("quantize.int8_static", StaticQuantConfig, needs=("calibration_data",),
                    summary="int8 static PTQ (per-channel weights, calibrated u8 activations) -> ONNX QDQ int8, "
                            "lowered unchanged to LiteRT/TFLM/ExecuTorch")
def int8_static(model: nn.Module, cfg: StaticQuantConfig, ctx: Context) -> QuantizedModel:
    """int8 static PTQ: fold BN, (equalize), calibrate, bias-correct, fake-quant model exporting to QDQ."""
    keep = 64 if cfg.calibrator == "auto" or "auto" in cfg.per_layer.values() else 0
    cfg, speed, built = keep_float_where_slower(model, cfg, ctx)
    if built is not None:  # the whole-program check already built the winner: its notes, and the timings, kept
        qm, inner = built
        note_speed(qm, speed)
        ctx.notes.extend(inner.notes)
        ctx.warnings.extend(inner.warnings)
        return qm
    qm = prepare_static(model, cfg, keep_inputs=keep, example=ctx.data.example_inputs(2))
    note_coverage(qm, ctx, speed)
    calibrate(qm, ctx.data, cfg)
    if cfg.bias_correction:
        qm.info["bias_correction_max_shift"] = bias_correct(qm, ctx.data, cfg)
    if qm.info.get("weight_range_reason"):
        ctx.note(qm.info["weight_range_reason"])
    ctx.note("PyTorch timings of a quantized model measure its fake-quant simulation; the deployable int8 model is "
             "the ONNX file, run by ONNX Runtime's integer kernels")
    ctx.note(f"int8 static: {len(qm.info['quantized_layers'])} layers quantized; calibrators: "
             + ", ".join(f"{k}={v}" for k, v in qm.info["calibrators"].items()))
    return qm


@dataclasses.dataclass
class QATConfig(StaticQuantConfig):
    """Quantization-aware training: static PTQ as the start, then fine-tuning
    through the fake-quant ops (straight-through estimator) with learnable
    scales (LSQ), recovering with distillation from the original model."""

    #: the planner draws the weight bits, whether 4-bit codes are packed two per byte on disk (smaller file; ONNX
    #: Runtime re-expands them at each run, which costs at batch 1) and the training length (each epoch trains
    #: through the fake-quant ops, so a QAT candidate costs about as much as a recovery of the same length)
    TUNABLE: ClassVar = {"weight_bits": Tunable(choices=(4, 8)), "pack_4bit": Tunable(choices=(True, False)),
                         "epochs": Tunable(2, 6, step=2)}

    weight_bits: int = 4
    calibrator: str = "mse"
    bias_correction: bool = False
    epochs: int = 5
    lr: float = 5e-4
    learn_scales: bool = True
    method: str = "kd"  # kd | plain
    temperature: float = 4.0
    alpha: float = 0.5

    def validate(self) -> None:
        super().validate()
        check_choice("method", self.method, ("kd", "plain"))
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs}: QAT needs at least 1 epoch")


@register_technique("quantize.qat", QATConfig, needs=("calibration_data", "train_data", "teacher"),
                    summary="quantization-aware training (STE, learnable LSQ scales, KD recovery) -> ONNX QDQ int8 "
                            "and the on-device runtimes")
def qat(model: nn.Module, cfg: QATConfig, ctx: Context) -> QuantizedModel:
    """QAT: calibrate like PTQ, then train through the fake-quant ops, then freeze."""
    from ..distill.trainer import recover
    from ..distill.finetune import Finetune

    cfg, speed, _ = keep_float_where_slower(model, cfg, ctx)
    qm = prepare_static(model, cfg, example=ctx.data.example_inputs(2))
    note_coverage(qm, ctx, speed)
    calibrate(qm, ctx.data, cfg)
    if cfg.learn_scales:
        for q in qm.layers().values():
            q.make_learnable()
        for g in qm.groups():
            g.make_learnable()
    recover(qm, ctx, Finetune(method=cfg.method, epochs=cfg.epochs, lr=cfg.lr, temperature=cfg.temperature,
                              alpha=cfg.alpha))
    for q in qm.layers().values():
        q.freeze()
    for g in qm.groups():
        g.freeze()
    qm.eval()
    qm.info["qat"] = {"epochs": cfg.epochs, "learned_scales": cfg.learn_scales, "recovery": cfg.method}
    ctx.note(f"QAT: {cfg.weight_bits}-bit weights, {cfg.epochs} epochs of {cfg.method} fine-tuning through fake-quant")
    return qm
