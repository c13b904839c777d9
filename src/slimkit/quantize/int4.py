"""Weight-only low-bit quantization (group-wise, 4-bit by default) for Linear
layers and embedding tables, stored packed (two codes per byte), so the file
really is about half of int8. Linear layers run through ONNX Runtime's
block-quantized MatMulNBits kernel (com.microsoft domain); embedding rows are
gathered packed and dequantized on the fly with standard ops.

Defaults measured on MiniLM (docs/BENCHMARKS.md): asymmetric groups of 32 with
float16 scales and 4-bit zero points (the zero points cost less than the float32
scales they replace), GPTQ with act-order, embedding rows in groups of 64, and a
small byte budget that gives the Linear layers whose 8-bit version lowers the
output error most per extra byte (measured on the calibration set) 8-bit groups
through the same kernel."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.config import Config, check_choice
from ..core.context import Context
from ..core.errors import ConfigError, ExportError
from ..export.onnx import write_onnx
from ..core.progress import track
from ..core.registry import register_technique
from ..core.targets import Targets
from ..core.data import DataBundle
from ..core.data import predict
from .dynamic import DynQuantModel, _plain_gemm, select_linears, value_key
from .gptq import gptq_codes
from ..core.graph import input_covariances, set_module
from .scheme import QScheme, fit_clip, pack_nibbles, quantize, sqnr_db
from ..core.checks import check_finite_weights
from ..evaluate.sensitivity import Step, measure, within_budget

_SCALE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
_FP16_TINY, _FP16_MAX = 2.0 ** -24, 65504.0  # smallest (subnormal) and largest float16


@dataclasses.dataclass
class Int4WeightConfig(Config):
    """4-bit weights in groups along the input dimension; activations stay float."""

    group_size: int = 32
    # asymmetric groups (a 4-bit zero point each) cut the rounding error of GPTQ-int4 MiniLM by a fifth
    # (cos 0.9836 -> 0.9864 at group 64) for half a byte per group
    symmetric: bool = False
    scale_dtype: str = "float16"  # in the file; ORT folds the cast to float32 at load
    method: str = "gptq"  # gptq (error-compensating, needs calibration data) | rtn (round to nearest)
    damp: float = 0.01  # GPTQ: share of the mean Hessian diagonal added for stability
    # GPTQ: columns in order of decreasing Hessian diagonal, scales fixed per group up front (MiniLM g64: cos mean
    # 0.9817 -> 0.9836, min 0.840 -> 0.860 in simulation, docs/BENCHMARKS.md)
    act_order: bool = True
    embeddings: bool = True
    # group of the embedding table's rows (0 = group_size): the table is the biggest tensor and its rows tolerate
    # coarser groups than the Linear layers (docs/BENCHMARKS.md)
    embedding_group_size: int = 128
    # extra bytes, as a share of the 4-bit weights' bytes, that may give the most sensitive Linear layers 8-bit
    # groups instead of 4-bit (greedy by output error saved per byte on the calibration set; 0 = all 4-bit)
    int8_budget: float = 0.025
    sensitivity_samples: int = 64  # calibration samples used to rank the layers for 8 bits
    keep_float: list = dataclasses.field(default_factory=list)
    targets: Targets = dataclasses.field(default_factory=lambda: Targets(types=["Linear"]))

    def validate(self) -> None:
        check_choice("group_size", self.group_size, (16, 32, 64, 128, 256))
        if self.embedding_group_size < 0 or (self.embedding_group_size and self.embedding_group_size % 2):
            raise ConfigError(f"embedding_group_size={self.embedding_group_size} must be 0 (= group_size) or even")
        check_choice("method", self.method, ("gptq", "rtn"))
        check_choice("scale_dtype", self.scale_dtype, tuple(_SCALE_DTYPES))
        if not 0 <= self.int8_budget <= 1:
            raise ConfigError(f"int8_budget={self.int8_budget} must be a share in [0, 1] (0 keeps every layer at 4 bits)")
        if isinstance(self.targets, (dict, list, str)):
            self.targets = Targets.from_dict(self.targets)


@dataclasses.dataclass
class GroupCodes:
    """Unsigned codes in [0, 2^bits - 1] with one scale and zero point per group of ``g`` along the last axis:
    value = (code - zero) * scale. Symmetric groups have zero = 2^(bits-1) (MatMulNBits' default)."""

    q: torch.Tensor  # [rows, k] float holding integers
    s: torch.Tensor  # [rows, k / g] float32 (values representable in the file's scale dtype)
    z: torch.Tensor  # [rows, k / g] float holding integers
    g: int
    bits: int
    symmetric: bool

    def dequantize(self) -> torch.Tensor:
        rows, k = self.q.shape
        return ((self.q.reshape(rows, k // self.g, self.g) - self.z[..., None]) * self.s[..., None]).reshape(rows, k)

    def nbytes(self, scale_bytes: int) -> float:
        """Bytes in the file: packed codes, scales, packed zero points (none for symmetric groups)."""
        groups = self.s.numel()
        return self.q.numel() * self.bits / 8 + groups * scale_bytes + (0 if self.symmetric else groups * self.bits / 8)


def _check_groups(k: int, g: int) -> None:
    if k % g:
        raise ConfigError(f"input size {k} is not divisible by group_size={g}; pick a group size that divides it")


def _round_scale(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scales as the file will hold them (float16 values are exactly what the kernel reads after the cast)."""
    if dtype == torch.float16:
        if bool((s > _FP16_MAX).any()):
            raise ConfigError(f"a weight group needs a scale of {float(s.max()):.3g}, beyond float16's range; "
                              "use scale_dtype: float32")
        return s.clamp(min=_FP16_TINY).half().float()
    return s.clamp(min=1e-12)


def _group_scheme(g: int, bits: int, symmetric: bool) -> QScheme:
    """The arithmetic of a group: symmetric groups are signed codes in [-2^(b-1), 2^(b-1)-1] stored with the
    offset 2^(b-1) (MatMulNBits' default zero point); asymmetric groups unsigned codes with their own zero."""
    return QScheme(bits=bits, symmetric=symmetric, signed=symmetric, granularity="per_group", group_size=g)


def fit_groups(w: torch.Tensor, g: int, bits: int = 4, symmetric: bool = True,
               scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group of ``g`` along the last axis, the scale (and unsigned zero point) whose codes reconstruct the
    group with the least squared error, searched over clipping ratios 0.6-1.0 of the group's range
    (:func:`slimkit.quantize.scheme.fit_clip`), the scales as the file holds them."""
    _check_groups(w.shape[1], g)
    s, z = fit_clip(w, _group_scheme(g, bits, symmetric), min_scale=1e-12,
                    round_scale=lambda s: _round_scale(s, scale_dtype))
    return s, z.float() + (2.0 ** (bits - 1) if symmetric else 0.0)


def encode(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, g: int, bits: int) -> torch.Tensor:
    """Unsigned codes of ``w`` on the grid (s, z): clamp(round(w / s) + z, 0, 2^bits - 1)."""
    return quantize(w, s, z, QScheme(bits=bits, symmetric=False, signed=False, granularity="per_group",
                                     group_size=g)).float()


def rtn(w: torch.Tensor, g: int, bits: int = 4, symmetric: bool = True,
        scale_dtype: torch.dtype = torch.float32) -> GroupCodes:
    """Round to nearest with MSE-chosen group scales."""
    s, z = fit_groups(w, g, bits, symmetric, scale_dtype)
    return GroupCodes(encode(w.detach().float(), s, z, g, bits), s, z, g, bits, symmetric)


def gptq(w: torch.Tensor, h: torch.Tensor, g: int, bits: int = 4, symmetric: bool = True,
         scale_dtype: torch.dtype = torch.float32, damp: float = 0.01, act_order: bool = False) -> GroupCodes:
    """GPTQ (:func:`slimkit.quantize.gptq.gptq_codes`) on the group grid of :func:`fit_groups`: with act-order the
    group scales are fixed up front on the original weights, otherwise chosen per group as it starts."""
    _check_groups(w.shape[1], g)
    rows, k = w.shape
    if act_order:  # inputs that never fire (zero Hessian diagonal) do not widen the grid
        s, z = fit_groups(w.detach().float().masked_fill(h.diagonal()[None, :] == 0, 0.0), g, bits, symmetric,
                          scale_dtype)
    else:
        s, z = torch.zeros(rows, k // g), torch.zeros(rows, k // g)
    q = gptq_codes(w, h, s, z, 0, 2 ** bits - 1, g, damp, act_order,
                   refit=lambda block: fit_groups(block, g, bits, symmetric, scale_dtype))
    return GroupCodes(q, s, z, g, bits, symmetric)


class Int4Linear(nn.Module):
    """A Linear layer whose weight is fixed group codes (4-bit, or 8-bit for a sensitive layer); the float weight
    held is their dequantized value, so the exported float graph and the simulation agree exactly."""

    def __init__(self, lin: nn.Linear, codes: GroupCodes):
        super().__init__()
        self.weight = nn.Parameter(codes.dequantize(), requires_grad=False)
        self.bias = None if lin.bias is None else nn.Parameter(lin.bias.detach().clone())
        self.use(codes)

    def use(self, codes: GroupCodes) -> None:
        self.codes, self.g, self.bits = codes, codes.g, codes.bits
        with torch.no_grad():
            self.weight.copy_(codes.dequantize())

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Int4Embedding(nn.Module):
    def __init__(self, emb: nn.Embedding, codes: GroupCodes):
        super().__init__()
        self.codes, self.g = codes, codes.g
        self.weight = nn.Parameter(codes.dequantize(), requires_grad=False)
        self.padding_idx = emb.padding_idx

    def forward(self, ids):
        return F.embedding(ids, self.weight, self.padding_idx)


class Int4Model(DynQuantModel):
    """Same wrapper as the dynamic int8 model; exports to MatMulNBits instead."""

    def slimkit_export(self, data: DataBundle, path, **kw):
        return export_int4(self, data, path, **kw)


def _sensitivity_split(cfg: Int4WeightConfig, ctx: Context):
    return ctx.data.calib.slice(0, min(cfg.sensitivity_samples, len(ctx.data.calib)))


def _scale_bytes(cfg: Int4WeightConfig) -> int:
    return 2 if cfg.scale_dtype == "float16" else 4


@torch.no_grad()
def _output_error(m: nn.Module, split, ref: torch.Tensor) -> float:
    """Relative squared error of the model's outputs on ``split`` to ``ref`` (from the output SQNR)."""
    return 10 ** (-sqnr_db(ref, predict(m, split)) / 10)


def _upgrade_to_8bit(m: nn.Module, float_weights: dict[str, torch.Tensor], ref: torch.Tensor,
                     layers: dict[str, GroupCodes], budget: float,
                     cfg: Int4WeightConfig, ctx: Context) -> tuple[list[str], list[dict]]:
    """Greedy: measure, one layer at a time, how much the output error on the calibration set falls when that
    layer gets 8-bit groups, then give 8 bits to the layers with the most error saved per extra byte while the
    extra bytes fit ``budget``. Rows: the share of the all-4-bit output error that layer's 8 bits remove, its extra
    kilobytes, the bits chosen."""
    sdt = _SCALE_DTYPES[cfg.scale_dtype]
    sb = _scale_bytes(cfg)
    split = _sensitivity_split(cfg, ctx)
    base = _output_error(m, split, ref)

    def probe(n, bits):  # one level: this layer alone at 8 bits
        mod, c4 = m.get_submodule(n), layers[n]
        c8 = rtn(float_weights[n], c4.g, bits, cfg.symmetric, sdt)
        mod.use(c8)
        err = _output_error(m, split, ref)
        mod.use(c4)
        extra = c8.nbytes(sb) - c4.nbytes(sb)
        # drop = the error it leaves minus the all-4-bit error (negative: it helps); saving = -extra bytes
        return Step(err - base, -extra, {"layer": n, "error_saved_pct": round(100 * (base - err) / max(base, 1e-30), 2),
                                         "extra_kb": round(extra / 1e3, 1)}, option=c8)

    sens = measure(layers, (8,), probe, "int4: 8-bit sensitivity")
    chosen = within_budget({n: (-c[1][0], -c[1][1]) for n, c in sens.cost.items()}, budget)
    for n in chosen:
        m.get_submodule(n).use(sens.options[n][1])
    rows = sens.table
    for r in rows:
        r["chosen_bits"] = 8 if r["layer"] in chosen else 4
    return chosen, rows


@register_technique("quantize.int4_weights", Int4WeightConfig,
                    summary="weight-only int4 (group-wise, packed) for Linear + embeddings -> ORT MatMulNBits",
                    onnx_only="int4 weight-only (ONNX Runtime's MatMulNBits)")
def int4_weights(model: nn.Module, cfg: Int4WeightConfig, ctx: Context) -> Int4Model:
    """Weight-only int4, group-wise, packed two codes per byte; optionally a few sensitive layers at 8 bits."""
    check_finite_weights(model)
    m = copy.deepcopy(model).eval()  # the user's model is left as it is (its train/eval mode too)
    linears = select_linears(m, cfg.targets, cfg.keep_float)
    if not linears:
        raise ConfigError("no Linear layer matched the targets; nothing to quantize")
    sdt = _SCALE_DTYPES[cfg.scale_dtype]
    method = cfg.method
    calib = ctx.has("calibration_data")
    if method == "gptq" and not calib:
        method = "rtn"
        ctx.note("int4: no calibration data, so round-to-nearest instead of GPTQ")
    hess = {}
    if method == "gptq":
        hess = input_covariances(m, ctx.data.calib, [n for n, _ in linears])
    upgrade = cfg.int8_budget > 0 and calib
    # the float model's outputs and weights, taken before any layer is quantized (for the 8-bit candidates)
    with torch.no_grad():
        ref = predict(m, _sensitivity_split(cfg, ctx)) if upgrade else None
    float_weights = {n: lin.weight.detach().clone() for n, lin in linears} if upgrade else {}
    codes = {}
    for n, lin in track(linears, f"int4 ({method})"):
        _check_groups(lin.in_features, cfg.group_size)
        if n in hess:
            codes[n] = gptq(lin.weight, hess[n], cfg.group_size, 4, cfg.symmetric, sdt, cfg.damp, cfg.act_order)
        else:
            codes[n] = rtn(lin.weight, cfg.group_size, 4, cfg.symmetric, sdt)
        set_module(m, n, Int4Linear(lin, codes[n]))
    embs = []
    eg = cfg.embedding_group_size or cfg.group_size
    if cfg.embeddings:
        for n, mod in list(m.named_modules()):
            if isinstance(mod, nn.Embedding) and mod.num_embeddings >= 256:
                if mod.embedding_dim % eg:
                    ctx.note(f"int4: embedding {n} stays float: its width {mod.embedding_dim} is not a multiple of the "
                             f"group size {eg} (set embedding_group_size to a divisor)")
                    continue
                set_module(m, n, Int4Embedding(mod, rtn(mod.weight, eg, 4, cfg.symmetric, sdt)))
                embs.append(n)
    int8, sens = [], []
    if upgrade:
        sb = _scale_bytes(cfg)
        weight_bytes = sum(c.nbytes(sb) for c in codes.values()) + sum(m.get_submodule(n).codes.nbytes(sb) for n in embs)
        int8, sens = _upgrade_to_8bit(m, float_weights, ref, codes, cfg.int8_budget * weight_bytes, cfg, ctx)
    elif cfg.int8_budget > 0:
        ctx.note("int4: no calibration data, so no layer is chosen for 8 bits (int8_budget unused)")
    info = {"scheme": f"weight-only int4 ({method}), {'symmetric' if cfg.symmetric else 'asymmetric'}, group "
                      f"{cfg.group_size} along the input dimension, {cfg.scale_dtype} scales, packed",
            "quantized_layers": [n for n, _ in linears], "int4_embeddings": embs, "embedding_group_size": eg,
            "int8_layers": int8}
    if sens:
        info["sensitivity"] = sens
    ctx.note(f"int4 weights: {len(linears)} Linear layers ({len(int8)} of them 8-bit) and {len(embs)} embedding "
             f"tables, group {cfg.group_size}")
    return Int4Model(m, info, cfg)


def _scales_input(G, name: str, s: torch.Tensor, scale_dtype: str, new: list) -> str:
    """A scale initializer in the file's dtype; float16 goes through a Cast that ORT folds at load."""
    from onnx import TensorProto, helper

    if scale_dtype == "float32":
        return G.add_init(name, s.numpy().astype(np.float32))
    half = G.add_init(name + "_f16", s.numpy().astype(np.float16))
    new.append(helper.make_node("Cast", [half], [name], name=name + "_cast", to=TensorProto.FLOAT))
    return name


def _nibbles(G, base: str, packed: str, ids: str, new: list) -> str:
    """Nodes that gather rows of a packed table and split each byte into its two nibbles (low first):
    [B, T, m] uint8 -> [B, T, m, 2] float."""
    from onnx import TensorProto, helper

    t = lambda s_: f"{base}_{s_}"  # noqa: E731
    c16 = G.add_init(t("16"), np.array(16.0, np.float32))
    ax = G.add_init(t("ax"), np.array([-1], np.int64))
    new += [
        helper.make_node("Gather", [packed, ids], [t("gp")], axis=0),
        helper.make_node("Cast", [t("gp")], [t("gf")], to=TensorProto.FLOAT),
        helper.make_node("Div", [t("gf"), c16], [t("hd")]),
        helper.make_node("Floor", [t("hd")], [t("hi")]),
        helper.make_node("Mul", [t("hi"), c16], [t("hi16")]),
        helper.make_node("Sub", [t("gf"), t("hi16")], [t("lo")]),
        helper.make_node("Unsqueeze", [t("lo"), ax], [t("lo1")]),
        helper.make_node("Unsqueeze", [t("hi"), ax], [t("hi1")]),
        helper.make_node("Concat", [t("lo1"), t("hi1")], [t("pairs")], axis=-1),
    ]
    return t("pairs")


def rewrite_int4(model, linears: dict, tables: dict, scale_dtype: str = "float32") -> dict:
    """Replace the quantized layers' MatMul/Gemm with MatMulNBits and their embedding Gathers with a packed
    gather + dequantization, using the codes the simulation holds (layers found by their float weight's value,
    :func:`slimkit.quantize.dynamic.export_float_graph`)."""
    from onnx import helper, numpy_helper

    from .onnx_passes import Graph, prune_unused, topo_sort

    G = Graph(model)
    new, mm, ga = [], 0, 0
    for n in list(G.g.node):
        gemm = n.op_type == "Gemm" and _plain_gemm(n)
        if (n.op_type == "MatMul" or gemm) and n.input[1] in G.inits:
            w = numpy_helper.to_array(G.inits[n.input[1]])
            if gemm and any(a.name == "transB" and a.i == 1 for a in n.attribute):
                w = w.T.copy()
            layer = linears.get(value_key(w)) if w.ndim == 2 else None
            if layer is None:
                continue
            k, nn_ = w.shape
            c = layer.codes
            nb = k // c.g
            q = c.q.numpy().reshape(nn_, nb, c.g)
            b = pack_nibbles(q) if c.bits == 4 else q.astype(np.uint8)
            base = n.name or n.output[0]
            ins = [n.input[0], G.add_init(base + "_B4", b),
                   _scales_input(G, base + "_S4", c.s.reshape(-1), scale_dtype, new)]
            if not c.symmetric:
                z = c.z.numpy()
                zb = pack_nibbles(z) if c.bits == 4 else z.astype(np.uint8)
                ins.append(G.add_init(base + "_Z4", zb.reshape(-1)))
            bias = gemm and len(n.input) > 2 and n.input[2]
            out = base + "_nb" if bias else n.output[0]
            new.append(helper.make_node("MatMulNBits", ins, [out], name=base + "_mnb",
                                        domain="com.microsoft", K=k, N=nn_, bits=c.bits, block_size=c.g))
            if bias:
                new.append(helper.make_node("Add", [out, n.input[2]], [n.output[0]], name=base + "_bias"))
            G.g.node.remove(n)
            mm += 1
        elif n.op_type == "Gather" and n.input[0] in G.inits:
            e = numpy_helper.to_array(G.inits[n.input[0]])
            table = tables.get(value_key(e)) if e.ndim == 2 else None
            if table is None:
                continue
            c = table.codes
            v, d = e.shape
            ge, ng = c.g, d // c.g
            base = n.name or n.output[0]
            ids = n.input[1]
            packed = G.add_init(base + "_E4", pack_nibbles(c.q.numpy()))
            pairs = _nibbles(G, base + "_q", packed, ids, new)  # [B,T,d/2,2]
            t = lambda s_: f"{base}_{s_}"  # noqa: E731
            ax = G.add_init(t("ax"), np.array([-1], np.int64))
            sn = _scales_input(G, base + "_E4s", c.s, scale_dtype, new)  # [V, d/ge]
            new += [helper.make_node("Reshape", [pairs, G.add_init(t("shp1"), np.array([0, 0, ng, ge], np.int64))],
                                     [t("grouped")]),
                    helper.make_node("Gather", [sn, ids], [t("gs")], axis=0),
                    helper.make_node("Unsqueeze", [t("gs"), ax], [t("gs1")])]
            if c.symmetric:
                zero = G.add_init(t("z8"), np.array(2.0 ** (c.bits - 1), np.float32))
            else:  # packed zero points, one nibble per group: [B,T,ceil(ng/2),2] -> [B,T,ng,1]
                zp = _nibbles(G, base + "_z", G.add_init(base + "_E4z", pack_nibbles(c.z.numpy())), ids, new)
                flat = G.add_init(t("shpz"), np.array([0, 0, -1], np.int64))
                new += [helper.make_node("Reshape", [zp, flat], [t("zf")]),
                        helper.make_node("Slice", [t("zf"), G.add_init(t("z0"), np.array([0], np.int64)),
                                                   G.add_init(t("zn"), np.array([ng], np.int64)), ax], [t("zs")]),
                        helper.make_node("Unsqueeze", [t("zs"), ax], [t("z1")])]
                zero = t("z1")
            new += [helper.make_node("Sub", [t("grouped"), zero], [t("centered")]),
                    helper.make_node("Mul", [t("centered"), t("gs1")], [t("deq")]),
                    helper.make_node("Reshape", [t("deq"), G.add_init(t("shp2"), np.array([0, 0, d], np.int64))],
                                     [n.output[0]])]
            G.g.node.remove(n)
            ga += 1
    G.g.node.extend(new)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    topo_sort(model)
    prune_unused(model)
    return {"matmulnbits": mm, "gathers": ga}


def export_int4(qm: Int4Model, data: DataBundle, path, *, opset: int = 17, check: bool = True):
    from ..export.onnx import check_parity
    from .dynamic import export_float_graph
    from .onnx_passes import optimized_op_types

    model, linears, tables = export_float_graph(qm, data, opset, Int4Linear, Int4Embedding)
    counts = rewrite_int4(model, linears, tables, qm.cfg.scale_dtype)
    if counts["matmulnbits"] == 0:
        raise ExportError("none of the int4 Linear layers was found in the ONNX graph")
    blob = model.SerializeToString()
    qm.info["onnx_rewrites"] = counts
    qm.info["ort_ops"] = sorted(set(optimized_op_types(blob)) & {"MatMulNBits"})
    parity = None
    if check:  # the kernel dequantizes exactly what the simulation uses: a tight check
        parity = check_parity(qm, blob, data, atol=float("inf"), min_cosine=0.999)
        qm.info["parity_int4_kernels"] = parity.to_dict()
        if not parity.ok:
            raise ExportError(f"int4 ONNX disagrees with its PyTorch simulation (cosine {parity.cosine:.5f}); nothing written")
    write_onnx(path, blob)
    return parity
