"""Dynamic int8 quantization: weights int8 offline (per output channel),
activations quantized at run time per tensor. For Linear layers (MatMul in
ONNX, incl. every transformer projection) and embeddings (Gather), so that
transformer files really shrink. SmoothQuant-style migration (Xiao et al.,
2023) moves activation outliers into the weights first.

Works on the exported ONNX graph (no tracing of the PyTorch model needed), so
Hugging Face models quantize as they are; a PyTorch simulation with the same
arithmetic is kept for accuracy work and the parity check."""
from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.config import Config, check_choice, check_range
from ..core.context import Context
from ..core.result import Compressed
from ..core.errors import ConfigError, DataError, ExportError
from ..export.onnx import write_onnx
from ..core.progress import track
from ..core.registry import register_technique
from ..core.targets import Targets
from ..core.data import DataBundle
from .gptq import gptq_codes
from .scheme import fake_quant_dynamic, fake_quant_per_token, symmetric_rows
from ..core.graph import input_covariances, set_module
from ..core.checks import check_finite_weights
from .static import INT8_KERNELS, weight_range_for_cpu


@dataclasses.dataclass
class DynamicQuantConfig(Config):
    """int8 dynamic quantization of Linear/MatMul weights (and embeddings)."""

    TUNABLE: ClassVar = {}

    per_channel: bool = True
    weight_range: str = "auto"  # auto | full | reduced (7-bit s8) | u8 (full 8-bit, u8 x u8 kernels)
    embeddings: bool = True  # word-embedding tables as int8 rows (Gather)
    # nn.LSTM -> ORT DynamicQuantizeLSTM (int8 weights, integer matmuls); nn.GRU -> int8 weights dequantized at run
    # time (ORT has no int8 GRU kernel: the file shrinks, the compute stays float)
    rnn: bool = True
    smoothquant_alpha: float = 0.5  # 0 disables the migration
    # layers that read one tensor (query/key/value) share one SmoothQuant scale, so the file scales and quantizes
    # that tensor once for all of them (MiniLM batch 1: about 3% faster, docs/BENCHMARKS.md)
    shared_smoothing: bool = True
    # SmoothQuant where the input comes from a LayerNorm with outlier channels (BERT-style Q/K/V and FFN-in)
    smooth: Targets = dataclasses.field(default_factory=lambda: Targets(
        include=["re:(attention\\.self\\.(query|key|value)|intermediate\\.dense)$"], types=["Linear"]))
    # per-token (per row) symmetric activation scales where one outlier token would squash a whole tensor's
    # range: by default the FFN output projections, whose GELU inputs carry the outliers (measured on MiniLM)
    per_token: Targets = dataclasses.field(default_factory=lambda: Targets(
        include=["re:layer\\.\\d+\\.output\\.dense$"], types=["Linear"]))
    keep_float: list = dataclasses.field(default_factory=list)  # Linear layer names (or re:) kept in fp32
    # GPTQ on the int8 grid: the same scales, codes chosen to cancel each other's output error on the calibration
    # inputs (free at run time: only the codes change)
    gptq: bool = True
    gptq_damp: float = 0.1  # MiniLM: cos min 0.974 at 0.01, 0.989 at 0.1 (docs/BENCHMARKS.md)
    # Linear names (or re:) whose weights keep full 8-bit codes as u8 (u8 x u8 kernels, which do not saturate on AVX2
    # without VNNI, but run slower) while the rest use 7-bit s8 there: fidelity for speed, layer by layer
    full_range: list = dataclasses.field(default_factory=list)
    calibration_samples: int = 128
    targets: Targets = dataclasses.field(default_factory=lambda: Targets(types=["Linear"]))

    def validate(self) -> None:
        check_choice("weight_range", self.weight_range, ("auto", "full", "reduced", "u8"))
        check_range("smoothquant_alpha", self.smoothquant_alpha, 0, 1)
        check_range("gptq_damp", self.gptq_damp, 0, 1)
        if self.calibration_samples < 2:
            raise ConfigError(f"calibration_samples={self.calibration_samples}: need at least 2")
        for attr in ("targets", "smooth", "per_token"):
            if isinstance(getattr(self, attr), (dict, list, str)):
                setattr(self, attr, Targets.from_dict(getattr(self, attr)))


def _wq(w: torch.Tensor, qmax: int, per_channel: bool,
        scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric codes in [-qmax, qmax] and scales of a [out, in] weight, per output row (``scale``: fixed ones,
    e.g. GPTQ's); qmax 127 (8-bit) or 63 (7-bit)."""
    return symmetric_rows(w, (qmax + 1).bit_length(), per_channel, scale)


class DynQuantLinear(nn.Module):
    """Linear with an optional SmoothQuant input scale; simulates dynamic int8 when ``sim`` is on."""

    def __init__(self, linear: nn.Linear, qmax: int, per_channel: bool, smooth: torch.Tensor | None = None):
        super().__init__()
        w = linear.weight.detach().clone()
        if smooth is not None:
            w = w * smooth[None, :]
            self.register_buffer("inv_smooth", (1.0 / smooth).float())
        else:
            self.inv_smooth = None
        self.weight = nn.Parameter(w)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        self.qmax, self.per_channel, self.sim = qmax, per_channel, True
        self.per_token = False  # per-row activation scales instead of one per tensor
        self.weight_u8 = False  # full 8-bit codes exported as u8 (u8 x u8 kernels)
        self.register_buffer("w_scale", None)  # fixed per-row weight scales (GPTQ codes), else from max |w|

    def forward(self, x):
        if self.inv_smooth is not None:
            x = x * self.inv_smooth
        if not self.sim:
            return F.linear(x, self.weight, self.bias)
        q, s = _wq(self.weight, self.qmax, self.per_channel, self.w_scale)
        return F.linear(fake_quant_per_token(x) if self.per_token else fake_quant_dynamic(x), q * s[:, None], self.bias)


@torch.no_grad()
def _gptq_int8(lin: DynQuantLinear, h: torch.Tensor, damp: float) -> None:
    """Replace the layer's weight by GPTQ codes on its own int8 grid (per-row scales from max |w| kept fixed), in
    the smoothed input space when SmoothQuant scaled its inputs."""
    if lin.inv_smooth is not None:
        inv = lin.inv_smooth.double()
        h = h * inv[:, None] * inv[None, :]
    _, s = _wq(lin.weight, lin.qmax, lin.per_channel)
    k = lin.weight.shape[1]
    q = gptq_codes(lin.weight, h, s[:, None], torch.zeros_like(s)[:, None], -lin.qmax, lin.qmax, k, damp, True)
    lin.weight.copy_(q * s[:, None])
    lin.w_scale = s.clone()


class _QuantRNN:
    """Mixin for nn.LSTM / nn.GRU: input and recurrent weights simulated as per-row int8 (one scale per gate
    unit, as ONNX Runtime's DynamicQuantizeLSTM and slimkit's GRU export use them); float when ``sim`` is off."""

    @classmethod
    def from_rnn(cls, rnn: nn.RNNBase, qmax: int):
        kw = dict(num_layers=rnn.num_layers, bias=rnn.bias, batch_first=rnn.batch_first, dropout=rnn.dropout,
                  bidirectional=rnn.bidirectional)
        if isinstance(rnn, nn.LSTM):
            kw["proj_size"] = rnn.proj_size
        new = cls(rnn.input_size, rnn.hidden_size, **kw)
        new.load_state_dict(rnn.state_dict())
        new.qmax, new.sim = qmax, True
        return new

    def forward(self, x, hx=None):
        if not self.sim:
            return super().forward(x, hx)
        saved = {}
        for name in self._flat_weights_names:
            if name.startswith("weight_"):
                w = getattr(self, name)
                q, sc = _wq(w.detach(), self.qmax, True)
                saved[name] = w.data
                w.data = q * sc[:, None]
        try:
            return super().forward(x, hx)
        finally:
            for name, d in saved.items():
                getattr(self, name).data = d


class DynQuantLSTM(_QuantRNN, nn.LSTM):
    """Runs as ONNX Runtime's DynamicQuantizeLSTM (int8 weights, integer gate matmuls)."""


class DynQuantGRU(_QuantRNN, nn.GRU):
    """int8 weights on disk (per-row scales, full 8-bit codes), dequantized at run time: ONNX Runtime has no
    int8 GRU kernel, so the file shrinks and the recurrence computes in float."""


class DynQuantEmbedding(nn.Module):
    def __init__(self, emb: nn.Embedding):
        super().__init__()
        self.weight = nn.Parameter(emb.weight.detach().clone())
        self.padding_idx = emb.padding_idx
        self.sim = True

    def forward(self, ids):
        w = self.weight
        if self.sim:
            q, s = _wq(w, 127, True)
            w = q * s[:, None]
        return F.embedding(ids, w, self.padding_idx)


class DynQuantModel(Compressed):
    # its PyTorch forward is the fake-quant simulation (float arithmetic): PyTorch timings of it are not a
    # deployment figure; the ONNX file is
    slimkit_simulated = True

    def __init__(self, model: nn.Module, info: dict, cfg: DynamicQuantConfig):
        super().__init__()
        self.model = model
        self.info = info
        self.cfg = cfg
        if hasattr(model, "source_dir"):
            self.source_dir = model.source_dir

    def forward(self, *x):
        return self.model(*x)

    def set_sim(self, on: bool) -> None:
        """Switch the quantization simulation of the wrapped layers on (default) or off (float export)."""
        for m in self.model.modules():
            if hasattr(m, "sim"):
                m.sim = on

    @property
    def slimkit_metrics(self) -> dict:
        return {"quantization": self.info}

    def slimkit_export(self, data: DataBundle, path, **kw):
        return export_dynamic(self, data, path, **kw)

    @torch.no_grad()
    def slimkit_dequantized(self) -> nn.Module:
        """A float copy whose Linear, recurrent and embedding weights are the int8 codes times their scales (the
        GPTQ codes where GPTQ chose them), SmoothQuant's input scaling kept: what LiteRT's dynamic-range int8
        quantizes again per channel, to the same codes where a row's largest code is the full one."""
        m = copy.deepcopy(self.model)
        for mod in m.modules():
            if isinstance(mod, DynQuantLinear):
                q, sc = _wq(mod.weight, mod.qmax, mod.per_channel, mod.w_scale)
                mod.weight.copy_(q * sc[:, None])
            elif isinstance(mod, _QuantRNN):
                for name in mod._flat_weights_names:
                    if name.startswith("weight_"):
                        w = getattr(mod, name)
                        q, sc = _wq(w, mod.qmax, True)
                        w.copy_(q * sc[:, None])
            elif isinstance(mod, DynQuantEmbedding):
                q, sc = _wq(mod.weight, 127, True)
                mod.weight.copy_(q * sc[:, None])
            if hasattr(mod, "sim"):
                mod.sim = False
        return m.eval()


@torch.no_grad()
def _act_absmax(model: nn.Module, names: list[str], data: DataBundle,
                n: int) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """Per input channel, the max |x| each named layer sees on the calibration set; and the layers grouped by the
    tensor they read (a transformer's query, key and value share one input)."""
    split = data.calib.slice(0, min(n, len(data.calib)))
    stats: dict[str, torch.Tensor] = {}
    # the first batch's input tensor of each layer, held so that its memory cannot be reused by a later layer's
    # input (grouping by address alone merged layers of different blocks): grouped by identity below
    first: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        def fn(mod, inp, out, k=name):
            a = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(0)
            stats[k] = a if k not in stats else torch.maximum(stats[k], a)
            first.setdefault(k, inp[0])
        hooks.append(model.get_submodule(name).register_forward_hook(fn))
    try:
        for x, _ in track(list(split.batches(32)), "calibrate (smoothquant)"):
            model(*x)
    finally:
        for h in hooks:
            h.remove()
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(id(first[name]) if name in first else id(name), []).append(name)
    return stats, list(groups.values())


def _smooth_scales(stats: dict, groups: list[list[str]], linears: dict, alpha: float,
                   shared: bool = True) -> dict[str, torch.Tensor]:
    """SmoothQuant input scales s = max|x|^a / max|w|^(1-a) per input channel. Layers that read the same tensor
    get one shared scale (max |w| over all of them), so the exported graph scales that tensor once and ONNX Runtime
    quantizes it once for all of them, as it does for the stock quantizer's query/key/value."""
    out = {}
    if not shared:
        groups = [[n] for g in groups for n in g]
    for group in groups:
        wmax = torch.stack([linears[n].weight.detach().abs().amax(0) for n in group]).amax(0).clamp(min=1e-5)
        s = (stats[group[0]].clamp(min=1e-5) ** alpha / wmax ** (1 - alpha)).clamp(min=1e-2, max=1e2)
        for n in group:
            out[n] = s
    return out


def select_linears(model: nn.Module, targets: Targets, keep_float: list) -> list[tuple[str, nn.Linear]]:
    """The Linear layers chosen by ``targets``, minus those ``keep_float`` names (same syntax as Targets)."""
    kept = {n for n, _ in Targets(include=list(keep_float), types=["Linear"]).select(model)} if keep_float else set()
    return [(n, m) for n, m in targets.select(model) if isinstance(m, nn.Linear) and n not in kept]


@register_technique("quantize.int8_dynamic", DynamicQuantConfig, needs=("calibration_data",),
                    summary="int8 dynamic quantization of Linear/MatMul + embeddings, SmoothQuant -> ONNX integer MatMul",
                    onnx_only="dynamic int8 (ONNX Runtime's DynamicQuantizeLinear)", lowers_to=("litert",))
def int8_dynamic(model: nn.Module, cfg: DynamicQuantConfig, ctx: Context) -> DynQuantModel:
    """Dynamic int8 (weights offline, activations at run time), per-channel, with SmoothQuant migration."""
    check_finite_weights(model)
    data = ctx.data
    if data is None or data.calib is None or len(data.calib) < 2:
        raise DataError("dynamic quantization calibrates SmoothQuant scales on at least 2 samples; give calibration data")
    m = copy.deepcopy(model).eval()
    wr, note = (cfg.weight_range, "") if cfg.weight_range != "auto" else weight_range_for_cpu()
    qmax = 63 if wr == "reduced" else 127
    linears = select_linears(m, cfg.targets, cfg.keep_float)
    has_rnn = cfg.rnn and any(type(x) in (nn.LSTM, nn.GRU) for x in m.modules())
    if not linears and not has_rnn:
        raise ConfigError("no Linear, LSTM or GRU layer matched the targets; nothing to quantize")
    smooth_names = [n for n, _ in cfg.smooth.select(m, strict=False)] if cfg.smoothquant_alpha > 0 else []
    smooth_names = [n for n in smooth_names if n in dict(linears)]
    stats, groups = _act_absmax(m, smooth_names, data, cfg.calibration_samples) if smooth_names else ({}, [])
    smooth = _smooth_scales(stats, groups, dict(linears), cfg.smoothquant_alpha, cfg.shared_smoothing) if stats else {}
    token_names = {n for n, _ in cfg.per_token.select(m, strict=False)} & set(dict(linears))
    full_names = set()
    if cfg.full_range and wr == "reduced":  # elsewhere every layer already has full 8-bit codes
        full_names = {n for n, _ in select_linears(m, Targets(include=list(cfg.full_range), types=["Linear"]), [])}
        full_names &= set(dict(linears))
    lstms, grus = [], []
    if cfg.rnn:
        for name, mod in list(m.named_modules()):
            if type(mod) is nn.LSTM and mod.proj_size == 0:
                set_module(m, name, DynQuantLSTM.from_rnn(mod, qmax))
                lstms.append(name)
            elif type(mod) is nn.GRU:
                # weights only, dequantized before a float kernel: no saturation, so full 8-bit codes
                set_module(m, name, DynQuantGRU.from_rnn(mod, 127))
                grus.append(name)
    if grus:
        ctx.note(f"GRU weights stored as int8 and dequantized at run time (ONNX Runtime has no int8 GRU kernel: "
                 f"the file shrinks, the recurrence computes in float): {', '.join(grus)}")
    hess = {}
    if cfg.gptq and linears:
        split = data.calib.slice(0, min(cfg.calibration_samples, len(data.calib)))
        hess = input_covariances(m, split, [n for n, _ in linears])
    for name, lin in (track(linears, "int8 (GPTQ)") if hess else linears):
        set_module(m, name, DynQuantLinear(lin, 127 if name in full_names else qmax, cfg.per_channel,
                                           smooth.get(name)))
        m.get_submodule(name).weight_u8 = name in full_names
        m.get_submodule(name).per_token = name in token_names
        if name in hess:
            _gptq_int8(m.get_submodule(name), hess[name], cfg.gptq_damp)
    embs = []
    if cfg.embeddings:
        for name, mod in list(m.named_modules()):
            if isinstance(mod, nn.Embedding) and mod.num_embeddings >= 256:
                set_module(m, name, DynQuantEmbedding(mod))
                embs.append(name)
    info = {"scheme": f"int8 dynamic: weights s8 symmetric {'per-channel' if cfg.per_channel else 'per-tensor'} "
                      f"({'7' if qmax == 63 else '8'}-bit codes), activations u8 per tensor at run time",
            "weight_range": wr, "weight_range_reason": note, "quantized_layers": [n for n, _ in linears],
            "float_layers": [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear)
                             and n not in dict(linears)],
            "smoothquant": {"alpha": cfg.smoothquant_alpha, "layers": list(stats)}, "int8_embeddings": embs,
            "per_token_activations": sorted(token_names), "full_range_u8_layers": sorted(full_names),
            "int8_lstms": lstms, "int8_storage_grus": grus}
    if note:
        ctx.note(note)
    ctx.note(f"int8 dynamic: {len(linears)} Linear layers, {len(lstms)} LSTM(s), {len(embs)} embedding tables, "
             f"SmoothQuant on {len(stats)}")
    return DynQuantModel(m, info, cfg)


# ----------------------------------------------------------------------------- ONNX rewriting

def _plain_gemm(n) -> bool:
    """Gemm that is a plain x @ W (+ b): alpha = beta = 1, no transA."""
    for a in n.attribute:
        if (a.name in ("alpha", "beta") and abs(a.f - 1.0) > 1e-12) or (a.name == "transA" and a.i):
            return False
    return True


def value_key(a: np.ndarray) -> bytes:
    """A tensor's identity by value (the ONNX exporter loses module names): its contiguous bytes."""
    return np.ascontiguousarray(a).tobytes()


def _rnn_rows(G, name: str, qmax: int):
    """An ONNX LSTM/GRU weight initializer [dirs, gates x H, in] as per-row int8 codes [dirs x rows, in] and scales."""
    from onnx import numpy_helper

    w = numpy_helper.to_array(G.inits[name])
    d, rows, cols = w.shape
    q, sc = _wq(torch.from_numpy(w.reshape(d * rows, cols).copy()), qmax, True)
    return d, rows, cols, q, sc


def quantize_onnx_dynamic(model, qmax: int, per_channel: bool, embeddings: bool, linears: dict, tables: dict,
                          weight_u8: bool = False, lstm: bool = False, gru: bool = False) -> dict:
    """Rewrite MatMul(x, W const) -> DynamicQuantizeLinear + MatMulInteger + scale
    (fused by ONNX Runtime into DynamicQuantizeMatMul), and Gather(E const, ids)
    -> int8 rows with a gathered per-row scale. ``linears`` / ``tables``: the quantized layers by their weight's
    value (:func:`export_float_graph`); each DynQuantLinear says how it runs (per-token activations, u8 weights,
    fixed GPTQ scales)."""
    from onnx import TensorProto, helper, numpy_helper

    from .onnx_passes import Graph, prune_unused, reduce_axes, topo_sort

    G = Graph(model)
    new_nodes, done, gathers, lstms, grus = [], 0, 0, 0, 0
    for n in list(G.g.node):
        gemm = n.op_type == "Gemm" and n.input[1] in G.inits and _plain_gemm(n)
        if (n.op_type == "MatMul" or gemm) and n.input[1] in G.inits:
            w = numpy_helper.to_array(G.inits[n.input[1]])  # [K, N] (Gemm with transB: [N, K])
            if gemm and any(a.name == "transB" and a.i == 1 for a in n.attribute):
                w = w.T.copy()
            layer = linears.get(value_key(w)) if w.ndim == 2 else None
            if layer is None:
                continue
            final_out = n.output[0]
            has_bias = gemm and len(n.input) > 2 and n.input[2]
            t = torch.from_numpy(w.T.copy())
            u8 = weight_u8 or layer.weight_u8
            q, s = _wq(t, 127 if u8 else qmax, per_channel, layer.w_scale)
            base = n.name or n.output[0]
            if u8:  # u8 x u8 kernels do not saturate on AVX2: full 8-bit codes, zero point 128
                qn = G.add_init(base + "_Wq", (q.numpy().T + 128).astype(np.uint8).copy())
                zn = [G.add_init(base + "_Wzp", np.full(q.shape[0], 128, np.uint8))]
            else:
                qn = G.add_init(base + "_Wq", q.numpy().T.astype(np.int8).copy())
                zn = []
            sn = G.add_init(base + "_Wscale", s.numpy().astype(np.float32))
            x = n.input[0]
            xq, xs, xz = base + "_xq", base + "_xscale", base + "_xzp"
            mm, mf, sc = base + "_mmi", base + "_mmf", base + "_scale"
            out = base + "_prebias" if has_bias else final_out
            if layer.per_token:
                # per-token symmetric scales: max|x| / 127 per row, codes + 128 as u8, zero point 128
                c = {k: G.add_init(f"{base}_{k}", np.array(v, np.float32)) for k, v in
                     (("eps", 1e-12 * 127.0), ("q127", 127.0), ("lo", -127.0), ("hi", 127.0), ("off", 128.0))}
                zp = G.add_init(base + "_xzp128", np.array(128, np.uint8))
                # a program's file is written at opset 18, where ReduceMax takes its axes as an input
                axes_in, axes_attr = reduce_axes(G, "ReduceMax", [-1], base + "_amax_axes")
                new_nodes += [
                    helper.make_node("Abs", [x], [base + "_abs"], name=base + "_abs"),
                    helper.make_node("ReduceMax", [base + "_abs"] + axes_in, [base + "_amax"], name=base + "_amax",
                                     keepdims=1, **axes_attr),
                    helper.make_node("Max", [base + "_amax", c["eps"]], [base + "_amaxc"], name=base + "_amaxc"),
                    helper.make_node("Div", [base + "_amaxc", c["q127"]], [xs], name=base + "_xs"),
                    helper.make_node("Div", [x, xs], [base + "_xdiv"], name=base + "_xdiv"),
                    helper.make_node("Round", [base + "_xdiv"], [base + "_xr"], name=base + "_xr"),
                    helper.make_node("Clip", [base + "_xr", c["lo"], c["hi"]], [base + "_xc"], name=base + "_xc"),
                    helper.make_node("Add", [base + "_xc", c["off"]], [base + "_xo"], name=base + "_xo"),
                    helper.make_node("Cast", [base + "_xo"], [xq], name=base + "_xu8", to=TensorProto.UINT8),
                    helper.make_node("MatMulInteger", [xq, qn, zp] + zn, [mm], name=base + "_mmi"),
                    helper.make_node("Cast", [mm], [mf], name=base + "_cast", to=TensorProto.FLOAT),
                    helper.make_node("Mul", [mf, xs], [sc], name=base + "_rowscale"),
                    helper.make_node("Mul", [sc, sn], [out], name=base + "_out"),
                ]
            else:  # one scale per tensor: the pattern ONNX Runtime fuses into DynamicQuantizeMatMul
                new_nodes += [
                    helper.make_node("DynamicQuantizeLinear", [x], [xq, xs, xz], name=base + "_dql"),
                    helper.make_node("MatMulInteger", [xq, qn, xz] + zn, [mm], name=base + "_mmi"),
                    helper.make_node("Cast", [mm], [mf], name=base + "_cast", to=TensorProto.FLOAT),
                    helper.make_node("Mul", [xs, sn], [sc], name=base + "_scalemul"),
                    helper.make_node("Mul", [mf, sc], [out], name=base + "_out"),
                ]
            if has_bias:
                new_nodes.append(helper.make_node("Add", [out, n.input[2]], [final_out], name=base + "_bias"))
            G.g.node.remove(n)
            done += 1
        elif gru and n.op_type == "GRU" and len(n.input) > 2 and n.input[1] in G.inits and n.input[2] in G.inits:
            base = n.name or n.output[0]
            for k, tag in ((1, "W"), (2, "R")):
                d, rows, cols, q, sc = _rnn_rows(G, n.input[k], 127)  # [dirs, 3H, in]: rows are gate units
                qn = G.add_init(f"{base}_{tag}q", q.numpy().astype(np.int8))
                sn = G.add_init(f"{base}_{tag}scale", sc.numpy().astype(np.float32))
                zn = G.add_init(f"{base}_{tag}zp", np.zeros(d * rows, np.int8))
                shp = G.add_init(f"{base}_{tag}shape", np.array([d, rows, cols], np.int64))
                new_nodes += [helper.make_node("DequantizeLinear", [qn, sn, zn], [f"{base}_{tag}dq"], axis=0,
                                               name=f"{base}_{tag}_DQ"),
                              helper.make_node("Reshape", [f"{base}_{tag}dq", shp], [f"{base}_{tag}f"],
                                               name=f"{base}_{tag}_reshape")]
                n.input[k] = f"{base}_{tag}f"
            grus += 1
        elif lstm and n.op_type == "LSTM" and len(n.input) > 2 and n.input[1] in G.inits and n.input[2] in G.inits:
            base = n.name or n.output[0]
            ins = [n.input[0]]
            extra = []
            for k, tag in ((1, "W"), (2, "R")):
                d, rows, cols, q, sc = _rnn_rows(G, n.input[k], qmax)  # [dirs, 4H, in]
                qa = q.numpy().astype(np.int8).reshape(d, rows, cols).transpose(0, 2, 1).copy()  # [dirs, in, 4H]
                ins.append(G.add_init(f"{base}_{tag}q", qa))
                extra += [G.add_init(f"{base}_{tag}scale", sc.numpy().astype(np.float32).reshape(d, rows)),
                          G.add_init(f"{base}_{tag}zp", np.zeros((d, rows), np.int8))]
            ins += [n.input[i] if len(n.input) > i else "" for i in range(3, 8)] + extra
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute if a.name != "layout"}
            attrs = {k: (v.decode() if isinstance(v, bytes) else
                         [x.decode() if isinstance(x, bytes) else x for x in v] if isinstance(v, list) else v)
                     for k, v in attrs.items()}
            new_nodes.append(helper.make_node("DynamicQuantizeLSTM", ins, list(n.output), name=base + "_dqlstm",
                                              domain="com.microsoft", **attrs))
            G.g.node.remove(n)
            lstms += 1
        elif embeddings and n.op_type == "Gather" and n.input[0] in G.inits:
            e = numpy_helper.to_array(G.inits[n.input[0]])
            if e.ndim != 2 or value_key(e) not in tables:
                continue
            q, s = _wq(torch.from_numpy(e.copy()), 127, True)
            base = n.name or n.output[0]
            qn = G.add_init(base + "_Eq", q.numpy().astype(np.int8))
            sn = G.add_init(base + "_Escale", s.numpy().astype(np.float32).reshape(-1, 1))
            gq, gs, gf = base + "_gq", base + "_gs", base + "_gf"
            new_nodes += [
                helper.make_node("Gather", [qn, n.input[1]], [gq], name=base + "_gather_q", axis=0),
                helper.make_node("Gather", [sn, n.input[1]], [gs], name=base + "_gather_s", axis=0),
                helper.make_node("Cast", [gq], [gf], name=base + "_cast", to=TensorProto.FLOAT),
                helper.make_node("Mul", [gf, gs], [n.output[0]], name=base + "_deq"),
            ]
            G.g.node.remove(n)
            gathers += 1
    G.g.node.extend(new_nodes)
    if lstms and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    topo_sort(model)
    prune_unused(model)
    return {"matmuls": done, "gathers": gathers, "lstms": lstms, "grus": grus}


def export_float_graph(qm, data: DataBundle, opset: int, linear_cls, embedding_cls):
    """Export the model with its simulation switched off (float weights), and map the weights of the layers it
    quantized (as ONNX stores them: Linear [in, out], tables [rows, width]) to those layers, so the ONNX rewrite
    touches exactly those (found by value: names are lost)."""
    import onnx

    from ..export.onnx import onnx_bytes

    qm.eval()
    qm.set_sim(False)
    try:
        blob = onnx_bytes(qm, data.example_inputs(2), data.input_names, data.dynamic_axes, opset)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"ONNX export failed: {(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}") from None
    finally:
        qm.set_sim(True)
    mods = list(qm.model.modules())
    linears = {value_key(m.weight.detach().numpy().T): m for m in mods if isinstance(m, linear_cls)}
    tables = {value_key(m.weight.detach().numpy()): m for m in mods if isinstance(m, embedding_cls)}
    return onnx.load_from_string(blob), linears, tables


def export_dynamic(qm: DynQuantModel, data: DataBundle, path, *, opset: int = 17, check: bool = True):

    from ..export.onnx import Parity, check_parity, ort_run, ort_session, output_error
    from .onnx_passes import merge_duplicate_scalings, optimized_op_types

    model, linears, tables = export_float_graph(qm, data, opset, DynQuantLinear, DynQuantEmbedding)
    qmax = 63 if qm.info["weight_range"] == "reduced" else 127
    weight_u8 = qm.info["weight_range"] == "u8"
    has_lstm = any(isinstance(m, DynQuantLSTM) for m in qm.model.modules())
    has_gru = any(isinstance(m, DynQuantGRU) for m in qm.model.modules())
    merged = merge_duplicate_scalings(model)  # query/key/value's shared SmoothQuant scale: one Mul, quantized once
    counts = quantize_onnx_dynamic(model, qmax, qm.cfg.per_channel, bool(tables), linears, tables, weight_u8,
                                   lstm=has_lstm, gru=has_gru)
    n_lin = sum(isinstance(m, DynQuantLinear) for m in qm.model.modules())
    if counts["matmuls"] == 0 and counts["lstms"] == 0 and counts["grus"] == 0:
        raise ExportError(f"none of the {n_lin} quantized Linear layers was found in the ONNX graph; "
                          "the model's export does not map onto its layers")
    qm.info["layers_unused_in_graph"] = n_lin - counts["matmuls"]
    qm.info["shared_input_scalings_merged"] = merged
    blob = model.SerializeToString()
    ops = optimized_op_types(blob)
    qm.info["onnx_rewrites"] = counts
    qm.info["ort_int8_kernels"] = sorted({o for o in ops if o in INT8_KERNELS})
    qm.info["ort_float_matmuls"] = sum(o in ("MatMul", "FusedMatMul", "Gemm") for o in ops)
    parity = None
    if check:
        with torch.no_grad():
            split = data.test.slice(0, min(32, len(data.test)))
            ref = qm(*split.inputs).float().numpy()
            got = ort_run(ort_session(blob, threads=2, optimize=False), split.inputs)
        err, cos = output_error(ref, got)
        # rounding-boundary flips compound through deep transformers: 0.995 is still a few quanta per output
        tight = Parity(err, cos, len(split), float("inf"), 0.995)
        qm.info["parity_qdq_reference"] = tight.to_dict()
        if not tight.ok:
            raise ExportError(f"dynamic int8 ONNX does not match its PyTorch simulation (cosine {cos:.4f}); nothing written")
        parity = check_parity(qm, blob, data, atol=float("inf"), min_cosine=0.98)
        qm.info["parity_int8_kernels"] = parity.to_dict()
        if not parity.ok:
            raise ExportError(f"int8 ONNX Runtime output disagrees with PyTorch (cosine {parity.cosine:.4f}); "
                              "nothing was written")
    write_onnx(path, blob)
    return parity
