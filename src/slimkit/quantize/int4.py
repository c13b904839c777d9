"""Weight-only int4 (group-wise, symmetric) for Linear layers and embedding
tables, stored packed (two codes per byte), so the file really is about half
of int8. Linear layers run through ONNX Runtime's block-quantized MatMulNBits
kernel (com.microsoft domain); embedding rows are gathered packed and
dequantized on the fly with standard ops."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.config import Config, check_choice
from ..core.context import Context
from ..core.errors import ConfigError, ExportError
from ..core.io import atomic_path
from ..core.progress import track
from ..core.registry import register_technique
from ..core.targets import Targets
from ..zoo.data import DataBundle
from .dynamic import DynQuantModel, _known, _plain_gemm, select_linears
from .graph import input_covariances, set_module
from .static import _check_finite_weights


@dataclasses.dataclass
class Int4WeightConfig(Config):
    """4-bit weights in groups along the input dimension; activations stay float."""

    group_size: int = 64
    method: str = "gptq"  # gptq (error-compensating, needs calibration data) | rtn (round to nearest)
    damp: float = 0.01  # GPTQ: share of the mean Hessian diagonal added for stability
    # GPTQ: columns in order of decreasing Hessian diagonal, scales fixed per group up front (MiniLM g64: cos mean
    # 0.9817 -> 0.9836, min 0.840 -> 0.860 in simulation, docs/BENCHMARKS.md)
    act_order: bool = True
    embeddings: bool = True
    # group of the embedding table's rows (0 = group_size); a whole row (e.g. 384) stores one scale per token instead
    # of six: the table is the biggest tensor and its rows tolerate coarser scales (docs/BENCHMARKS.md)
    embedding_group_size: int = 0
    keep_float: list = dataclasses.field(default_factory=list)
    targets: Targets = dataclasses.field(default_factory=lambda: Targets(types=["Linear"]))

    def validate(self) -> None:
        check_choice("group_size", self.group_size, (16, 32, 64, 128, 256))
        if self.embedding_group_size < 0 or (self.embedding_group_size and self.embedding_group_size % 2):
            raise ConfigError(f"embedding_group_size={self.embedding_group_size} must be 0 (= group_size) or even")
        check_choice("method", self.method, ("gptq", "rtn"))
        if isinstance(self.targets, (dict, list, str)):
            self.targets = Targets.from_dict(self.targets)


def q4(w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric 4-bit codes in [-8, 7] and one MSE-chosen scale per group of ``g`` along the last axis."""
    rows, k = w.shape
    if k % g:
        raise ConfigError(f"input size {k} is not divisible by group_size={g}; pick a group size that divides it")
    wg = w.detach().reshape(rows, k // g, g)
    amax = wg.abs().amax(-1).clamp(min=1e-12)
    # per group, the clipping scale with the least squared error (plain max is rarely best at 4 bits)
    best_s, best_e = amax / 7.0, None
    for f in torch.linspace(0.6, 1.0, 9):
        s = amax * f / 7.0
        q = torch.clamp(torch.round(wg / s[..., None]), -8, 7)
        e = (q * s[..., None] - wg).pow(2).sum(-1)
        if best_e is None:
            best_e, best_s = e, s
        else:
            better = e < best_e
            best_e = torch.where(better, e, best_e)
            best_s = torch.where(better, s, best_s)
    s = best_s
    q = torch.clamp(torch.round(w.reshape(rows, k // g, g) / s[..., None]), -8, 7)
    return q.reshape(rows, k), s


@torch.no_grad()
def gptq_q4(w: torch.Tensor, h: torch.Tensor, g: int, damp: float = 0.01,
            act_order: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ (Frantar et al. 2023) with 4-bit group codes: quantize one input column at a
    time and spread its error over the columns not yet quantized, weighted by the inverse
    Hessian of the layer's output error (H = sum of x x^T over calibration inputs).
    Group scales come from the MSE search of :func:`q4`."""
    w = w.detach().float().clone()
    rows, k = w.shape
    if k % g:
        raise ConfigError(f"input size {k} is not divisible by group_size={g}; pick a group size that divides it")
    h = h.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * h.diagonal().mean() * torch.eye(k, dtype=h.dtype)
    # act-order: inputs with the most energy first, while the most columns are left to absorb their error, with
    # "static groups" (scales fixed up front per contiguous group, so the file keeps the groups MatMulNBits reads);
    # otherwise natural order, each group's scale chosen when it starts, on the error-updated weights
    scales = q4(w, g)[1] if act_order else torch.zeros(rows, k // g)
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(k)
    w, h = w[:, perm], h[perm][:, perm]
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    q = torch.zeros(rows, k)
    for j in range(k):
        i = int(perm[j])
        if not act_order and j % g == 0:
            scales[:, j // g] = q4(w[:, j:j + g], g)[1][:, 0]
        s = scales[:, i // g]
        col = w[:, j]
        qi = torch.clamp(torch.round(col / s), -8, 7)
        q[:, i] = qi
        err = (col - qi * s) / hinv[j, j]
        if j + 1 < k:
            w[:, j + 1:] -= err[:, None] * hinv[j, j + 1:][None, :]
    return q, scales


def dq4(q: torch.Tensor, s: torch.Tensor, g: int) -> torch.Tensor:
    rows, k = q.shape
    return (q.reshape(rows, k // g, g) * s[..., None]).reshape(rows, k)


class Int4Linear(nn.Module):
    def __init__(self, lin: nn.Linear, g: int):
        super().__init__()
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.bias = None if lin.bias is None else nn.Parameter(lin.bias.detach().clone())
        self.g, self.sim = g, True
        self.register_buffer("codes", None)  # fixed codes and scales (GPTQ), else rounded on the fly
        self.register_buffer("scales", None)
        q4(self.weight.detach(), g)  # validates the group size now

    def fix(self, q: torch.Tensor, s: torch.Tensor) -> None:
        """Use these codes and scales (e.g. from GPTQ); the float weight becomes their dequantized value."""
        self.codes, self.scales = q.to(torch.int8), s.float()
        with torch.no_grad():
            self.weight.copy_(dq4(q.float(), s.float(), self.g))

    def forward(self, x):
        if not self.sim:
            w = self.weight
        elif self.codes is not None:
            w = dq4(self.codes.float(), self.scales, self.g)
        else:
            w = dq4(*q4(self.weight, self.g), self.g)
        return F.linear(x, w, self.bias)


class Int4Embedding(nn.Module):
    def __init__(self, emb: nn.Embedding, g: int):
        super().__init__()
        self.weight = nn.Parameter(emb.weight.detach().clone())
        self.padding_idx, self.g, self.sim = emb.padding_idx, g, True
        q4(self.weight.detach(), g)

    def forward(self, ids):
        w = dq4(*q4(self.weight, self.g), self.g) if self.sim else self.weight
        return F.embedding(ids, w, self.padding_idx)


class Int4Model(DynQuantModel):
    """Same wrapper as the dynamic int8 model; exports to MatMulNBits instead."""

    def slimkit_export(self, data: DataBundle, path, **kw):
        return export_int4(self, data, path, **kw)


@register_technique("quantize.int4_weights", Int4WeightConfig,
                    summary="weight-only int4 (group-wise, packed) for Linear + embeddings -> ORT MatMulNBits")
def int4_weights(model: nn.Module, cfg: Int4WeightConfig, ctx: Context) -> Int4Model:
    """Weight-only int4, group-wise symmetric, packed two codes per byte."""
    _check_finite_weights(model)
    m = copy.deepcopy(model).eval()
    linears = select_linears(m, cfg.targets, cfg.keep_float)
    if not linears:
        raise ConfigError("no Linear layer matched the targets; nothing to quantize")
    method = cfg.method
    if method == "gptq" and not ctx.has("calibration_data"):
        method = "rtn"
        ctx.note("int4: no calibration data, so round-to-nearest instead of GPTQ")
    hess = {}
    if method == "gptq":
        hess = input_covariances(m, ctx.data.calib, [n for n, _ in linears])
    for n, lin in track(linears, f"int4 ({method})"):
        il = Int4Linear(lin, cfg.group_size)
        if n in hess:
            il.fix(*gptq_q4(lin.weight, hess[n], cfg.group_size, cfg.damp, cfg.act_order))
        set_module(m, n, il)
    embs = []
    eg = cfg.embedding_group_size or cfg.group_size
    if cfg.embeddings:
        for n, mod in list(m.named_modules()):
            if isinstance(mod, nn.Embedding) and mod.num_embeddings >= 256:
                if mod.embedding_dim % eg:
                    ctx.note(f"int4: embedding {n} stays float: its width {mod.embedding_dim} is not a multiple of the "
                             f"group size {eg} (set embedding_group_size to a divisor)")
                    continue
                set_module(m, n, Int4Embedding(mod, eg))
                embs.append(n)
    info = {"scheme": f"weight-only int4 ({method}), symmetric, group {cfg.group_size} along the input dimension, "
                      "packed",
            "quantized_layers": [n for n, _ in linears], "int4_embeddings": embs}
    ctx.note(f"int4 weights: {len(linears)} Linear layers and {len(embs)} embedding tables, group {cfg.group_size}")
    return Int4Model(m, info, cfg)


def _pack(q: np.ndarray) -> np.ndarray:
    """Codes in [-8, 7] -> uint8, two per byte, low nibble first (q + 8)."""
    u = (q.astype(np.int16) + 8).astype(np.uint8)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def rewrite_int4(model, g: int, weights: dict, tables: dict, fixed: dict | None = None, eg: int = 0) -> dict:
    from onnx import TensorProto, helper, numpy_helper

    from .onnx_passes import Graph, prune_unused, topo_sort

    G = Graph(model)
    new, mm, ga = [], 0, 0
    for n in list(G.g.node):
        gemm = n.op_type == "Gemm" and _plain_gemm(n)
        if (n.op_type == "MatMul" or gemm) and n.input[1] in G.inits:
            w = numpy_helper.to_array(G.inits[n.input[1]])
            if gemm and any(a.name == "transB" and a.i == 1 for a in n.attribute):
                w = w.T.copy()
            if w.ndim != 2 or not _known(weights, w):
                continue
            k, nn_ = w.shape
            key = np.ascontiguousarray(w).tobytes()
            q, s = (fixed or {}).get(key) or q4(torch.from_numpy(w.T.copy()), g)  # [N, K], [N, K/g]
            packed = _pack(q.numpy()).reshape(nn_, k // g, g // 2)
            base = n.name or n.output[0]
            bn = G.add_init(base + "_B4", packed)
            sn = G.add_init(base + "_S4", s.numpy().astype(np.float32).reshape(-1))
            bias = gemm and len(n.input) > 2 and n.input[2]
            out = base + "_nb" if bias else n.output[0]
            new.append(helper.make_node("MatMulNBits", [n.input[0], bn, sn], [out], name=base + "_mnb",
                                        domain="com.microsoft", K=k, N=nn_, bits=4, block_size=g))
            if bias:
                new.append(helper.make_node("Add", [out, n.input[2]], [n.output[0]], name=base + "_bias"))
            G.g.node.remove(n)
            mm += 1
        elif n.op_type == "Gather" and n.input[0] in G.inits:
            e = numpy_helper.to_array(G.inits[n.input[0]])
            if e.ndim != 2 or not _known(tables, e):
                continue
            v, d = e.shape
            ge = eg or g
            q, s = q4(torch.from_numpy(e.copy()), ge)
            base = n.name or n.output[0]
            pn = G.add_init(base + "_E4", _pack(q.numpy()))  # [V, D/2]
            sn = G.add_init(base + "_E4s", s.numpy().astype(np.float32))  # [V, D/ge]
            c16, c8 = G.add_init(base + "_16", np.array(16.0, np.float32)), G.add_init(base + "_8", np.array(8.0, np.float32))
            shp_pairs = G.add_init(base + "_shp1", np.array([0, 0, d // ge, ge], np.int64))
            shp_out = G.add_init(base + "_shp2", np.array([0, 0, d], np.int64))
            ax = G.add_init(base + "_ax", np.array([-1], np.int64))
            t = lambda s_: f"{base}_{s_}"  # noqa: E731
            new += [
                helper.make_node("Gather", [pn, n.input[1]], [t("gp")], axis=0),
                helper.make_node("Cast", [t("gp")], [t("gf")], to=TensorProto.FLOAT),
                helper.make_node("Div", [t("gf"), c16], [t("hd")]),
                helper.make_node("Floor", [t("hd")], [t("hi")]),
                helper.make_node("Mul", [t("hi"), c16], [t("hi16")]),
                helper.make_node("Sub", [t("gf"), t("hi16")], [t("lo")]),
                helper.make_node("Unsqueeze", [t("lo"), ax], [t("lo1")]),
                helper.make_node("Unsqueeze", [t("hi"), ax], [t("hi1")]),
                helper.make_node("Concat", [t("lo1"), t("hi1")], [t("pairs")], axis=-1),
                helper.make_node("Sub", [t("pairs"), c8], [t("codes")]),
                helper.make_node("Reshape", [t("codes"), shp_pairs], [t("grouped")]),
                helper.make_node("Gather", [sn, n.input[1]], [t("gs")], axis=0),
                helper.make_node("Unsqueeze", [t("gs"), ax], [t("gs1")]),
                helper.make_node("Mul", [t("grouped"), t("gs1")], [t("deq")]),
                helper.make_node("Reshape", [t("deq"), shp_out], [n.output[0]]),
            ]
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

    model, weights, tables = export_float_graph(qm, data, opset, Int4Linear, Int4Embedding)
    fixed = {np.ascontiguousarray(mod.weight.detach().numpy().T).tobytes(): (mod.codes.float(), mod.scales)
             for mod in qm.model.modules() if isinstance(mod, Int4Linear) and mod.codes is not None}
    counts = rewrite_int4(model, qm.cfg.group_size, weights, tables, fixed, qm.cfg.embedding_group_size)
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
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(blob)
    return parity
