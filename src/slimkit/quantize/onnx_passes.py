"""ONNX graph passes that turn an exported fake-quant (QDQ) graph into a
deployable int8 file: weights stored as int8 initializers, biases as int32,
so that the file really shrinks and ONNX Runtime selects its integer kernels."""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .scheme import pack_nibbles


class Graph:
    """Small index over an ONNX graph: producers, consumers, constants."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.g = model.graph
        self.reindex()

    def reindex(self) -> None:
        self.inits = {i.name: i for i in self.g.initializer}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def const(self, name: str) -> Optional[np.ndarray]:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Identity":  # the exporter de-duplicates equal tensors this way
            return self.const(p.input[0])
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def add_init(self, name: str, arr: np.ndarray) -> str:
        if name in self.inits:
            self.g.initializer.remove(self.inits[name])
        t = numpy_helper.from_array(arr, name)
        self.g.initializer.append(t)
        self.inits[name] = t
        return name

    def rewire(self, old: str, new: str) -> None:
        """Every consumer of tensor ``old`` reads ``new`` instead."""
        for c in self.consumers.get(old, []):
            for k, inp in enumerate(c.input):
                if inp == old:
                    c.input[k] = new

    def axis(self, node) -> int:
        for a in node.attribute:
            if a.name == "axis":
                return a.i
        return 1


def fold_weight_quantize(model: onnx.ModelProto) -> int:
    """QuantizeLinear(constant W) -> int8 initializer. Returns how many were folded."""
    G = Graph(model)
    folded, remove = 0, []
    for n in list(G.g.node):
        if n.op_type != "QuantizeLinear":
            continue
        w = G.const(n.input[0])
        if w is None:
            continue
        scale = G.const(n.input[1])
        zp = G.const(n.input[2]) if len(n.input) > 2 and n.input[2] else np.array(0, np.uint8)
        if scale is None or zp is None:
            continue
        ax = G.axis(n)
        shape = [1] * w.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[ax % w.ndim] = -1
        s, z = scale.reshape(shape), zp.astype(np.int32).reshape(shape)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.round(w / s) + z, info.min, info.max).astype(zp.dtype)
        name = n.input[0] + "_quantized"
        G.add_init(name, q)
        G.rewire(n.output[0], name)
        remove.append(n)
        folded += 1
        for c in G.consumers.get(n.output[0], []):
            lo, hi = (G.const(c.input[k]) if len(c.input) > k and c.input[k] else None for k in (1, 2))
            if c.op_type == "Clip" and lo is not None and hi is not None:
                # the torch.export-based exporter clips per-channel codes to quant_min/quant_max between Q and DQ
                G.rewire(c.output[0], G.add_init(name + "_clipped", np.clip(q, lo, hi).astype(q.dtype)))
                remove.append(c)
    for n in remove:
        G.g.node.remove(n)
    prune_unused(model)
    G.reindex()
    _fold_weight_transposes(G)
    return folded


def _fold_weight_transposes(G: Graph) -> int:
    """Transpose(DequantizeLinear(constant codes)) -> DequantizeLinear(transposed codes) on the transposed axis:
    the torch.export-based exporter writes a Linear on 3-d inputs as MatMul(x, Transpose(W)), and ONNX Runtime
    fuses its integer MatMul only where the DequantizeLinear of the weight feeds the MatMul directly."""
    folded = 0
    for t in list(G.g.node):
        dq = G.producer.get(t.input[0]) if t.op_type == "Transpose" else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in G.inits:
            continue
        if len(G.consumers.get(dq.output[0], [])) != 1:
            continue
        codes = numpy_helper.to_array(G.inits[dq.input[0]])
        perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), list(range(codes.ndim))[::-1])
        scale = G.const(dq.input[1])
        axis = perm.index(G.axis(dq) % codes.ndim) if scale is not None and scale.size > 1 else 0
        name = G.add_init(dq.input[0] + "_transposed", np.ascontiguousarray(codes.transpose(perm)))
        G.g.node.append(helper.make_node("DequantizeLinear", [name, *dq.input[1:]], [t.output[0]],
                                         name=(dq.name or name) + "_transposed", axis=axis))
        G.g.node.remove(t)
        G.g.node.remove(dq)
        folded += 1
    if folded:
        topo_sort(G.model)
        prune_unused(G.model)
        G.reindex()
    return folded


def quantize_biases(model: onnx.ModelProto) -> int:
    """Float bias of Conv/Gemm whose input and weight come from DequantizeLinear
    -> int32 initializer with scale s_x * s_w, behind a DequantizeLinear."""
    G = Graph(model)
    count = 0
    for n in list(G.g.node):
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or not n.input[2]:
            continue
        b = G.const(n.input[2])
        dx, dw = G.producer.get(n.input[0]), G.producer.get(n.input[1])
        if b is None or dx is None or dw is None or dx.op_type != "DequantizeLinear" or dw.op_type != "DequantizeLinear":
            continue
        sx, sw = G.const(dx.input[1]), G.const(dw.input[1])
        if sx is None or sw is None or sx.size != 1:
            continue
        s = (sx.reshape(()) * sw.reshape(-1)).astype(np.float32)
        if s.size == 1:
            s = np.full(b.shape, float(s.reshape(())), np.float32)
        if not np.all(np.abs(b / s) < 2 ** 31 - 1):
            # a channel whose weights are (nearly) all zero, e.g. a dead depthwise channel after BatchNorm folding,
            # has a tiny weight scale: its bias does not fit int32 codes, so the layer keeps its float bias
            continue
        q = np.round(b / s).astype(np.int32)
        base = n.input[2]
        qn = G.add_init(base + "_int32", q)
        sn = G.add_init(base + "_int32_scale", s)
        zn = G.add_init(base + "_int32_zp", np.zeros_like(q))
        out = base + "_dequantized"
        G.g.node.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [out], name=base + "_DQ", axis=0))
        n.input[2] = out
        count += 1
    topo_sort(model)
    prune_unused(model)
    return count


def merge_duplicate_scalings(model: onnx.ModelProto) -> int:
    """Mul nodes that scale the same tensor by equal constants become one (SmoothQuant's shared input scales for
    layers that read one tensor), so ONNX Runtime quantizes that tensor once for all of them. Returns how many
    were removed."""
    G = Graph(model)
    graph_outputs = {o.name for o in G.g.output}
    seen: dict = {}
    removed = 0
    for n in list(G.g.node):
        c = G.const(n.input[1]) if n.op_type == "Mul" and len(n.input) == 2 else None
        if c is None or n.output[0] in graph_outputs:
            continue
        key = (n.input[0], c.dtype.str, c.shape, c.tobytes())
        if key in seen:
            G.rewire(n.output[0], seen[key])
            G.g.node.remove(n)
            removed += 1
        else:
            seen[key] = n.output[0]
    if removed:
        prune_unused(model)
    return removed


def prune_unused(model: onnx.ModelProto) -> None:
    g = model.graph
    changed = True
    while changed:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        changed = bool(dead)
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)


def topo_sort(model: onnx.ModelProto) -> None:
    g = model.graph
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    nodes, out = list(g.node), []
    while nodes:
        progressed = False
        for n in list(nodes):
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
                nodes.remove(n)
                progressed = True
        if not progressed:  # a cycle or a missing input: keep the rest as they were
            out.extend(nodes)
            break
    del g.node[:]
    g.node.extend(out)


def optimized_op_types(model_bytes: bytes) -> list[str]:
    """The op types ONNX Runtime actually runs after its graph optimisations."""
    import os

    import onnxruntime as ort

    from ..core.io import scratch

    with scratch() as d:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        m = onnx.load(so.optimized_model_filepath)
    return [n.op_type for n in m.graph.node]


def _int4_tensor(name: str, kind: int, codes: np.ndarray) -> onnx.TensorProto:
    """Raw little-nibble-first packing (ONNX's INT4/UINT4 layout): two codes per byte."""
    raw = pack_nibbles(codes.reshape(-1)).tobytes()
    return helper.make_tensor(name, kind, codes.shape, raw, raw=True)


def pack_low_bit_weights(model: onnx.ModelProto) -> int:
    """Store weight codes that fit in 4 bits as packed INT4/UINT4 initializers
    (two codes per byte, ONNX opset 21), so a layer quantized to <= 4 bits really
    takes half the bytes of int8 on disk.

    The graph keeps ONNX Runtime's integer kernels: each packed weight goes
    through DequantizeLinear(int4) -> QuantizeLinear(int8) with the same scale,
    exact because 4-bit codes are int8 codes, and the original DequantizeLinear
    -> Conv/Gemm pattern still fuses into QLinearConv/QGemm. The cost is that the
    two small weight ops run at every inference (measured in docs/BENCHMARKS.md).
    Returns how many weights were packed; the opset is raised to 21 if any."""
    from onnx import TensorProto

    G = Graph(model)
    packed = 0
    for n in list(G.g.node):
        if n.op_type != "DequantizeLinear" or n.input[0] not in G.inits or len(n.input) < 3:
            continue
        q, zp = G.const(n.input[0]), G.const(n.input[2])
        if q is None or zp is None or q.ndim < 2 or q.dtype not in (np.int8, np.uint8):
            continue
        lo, hi = (-8, 7) if q.dtype == np.int8 else (0, 15)
        if q.min() < lo or q.max() > hi or zp.min() < lo or zp.max() > hi:
            continue
        users = G.consumers.get(n.input[0], [])
        if len(users) != 1:  # a shared initializer: leave it as it is
            continue
        kind = TensorProto.INT4 if q.dtype == np.int8 else TensorProto.UINT4
        base = n.input[0]
        q4, z4 = _int4_tensor(base + "_4bit", kind, q), _int4_tensor(base + "_4bit_zp", kind, zp)
        for t in (q4, z4):
            G.g.initializer.append(t)
        axis = [helper.make_attribute("axis", G.axis(n))] if zp.size > 1 else []
        dq = helper.make_node("DequantizeLinear", [q4.name, n.input[1], z4.name], [base + "_4bit_dq"],
                              name=base + "_4bit_DQ")
        rq = helper.make_node("QuantizeLinear", [base + "_4bit_dq", n.input[1], n.input[2]], [base + "_8bit"],
                              name=base + "_8bit_Q")
        for node in (dq, rq):
            node.attribute.extend(axis)
            G.g.node.append(node)
        n.input[0] = base + "_8bit"
        packed += 1
    if packed:
        raise_opset(model, 21)
        topo_sort(model)
        prune_unused(model)
    return packed


#: reductions whose ``axes`` attribute became an input in opset 18 (ReduceSum's already in 13)
_AXES_TO_INPUT_18 = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
                     "ReduceLogSumExp", "ReduceSumSquare")


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def reduce_axes(G: "Graph", op: str, axes: list[int], name: str) -> tuple[list[str], dict]:
    """Extra inputs and attributes of a reduction over ``axes`` written into ``G``'s model: the ``axes`` attribute
    below opset 18, an int64 input (an initializer added here) from 18 on, where the attribute is invalid. Returns
    (extra inputs, attributes) for ``helper.make_node``."""
    if op in _AXES_TO_INPUT_18 and default_opset(G.model) >= 18:
        return [G.add_init(name, np.asarray(axes, np.int64))], {}
    return [], {"axes": list(axes)}


def raise_opset(model: onnx.ModelProto, version: int) -> None:
    """Raise the default-domain opset to ``version`` and convert every node whose signature changed on the way
    (the reductions' ``axes`` attribute becomes an int64 input at 18: ``x.mean((2, 3))``, a global average pool,
    exports as ReduceMean). Other ops whose signature moved between 17 and 21 (Split's ``num_outputs``, Pad's
    ``axes``, Resize's antialias) only gained optional inputs or attributes."""
    cur = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), version)
    if cur >= version:
        return
    if cur < 18 <= version:
        for n in model.graph.node:
            if n.domain in ("", "ai.onnx") and n.op_type in _AXES_TO_INPUT_18:
                attr = next((a for a in n.attribute if a.name == "axes"), None)
                if attr is None:
                    continue
                name = f"{n.name or n.output[0]}_axes"
                model.graph.initializer.append(numpy_helper.from_array(np.asarray(list(attr.ints), np.int64), name))
                n.attribute.remove(attr)
                n.input.append(name)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = version


def unpack_low_bit_weights(model: onnx.ModelProto) -> int:
    """The inverse of :func:`pack_low_bit_weights`, for loading: each packed
    weight's DequantizeLinear(int4) -> QuantizeLinear(int8) pair becomes an int8
    initializer again, so the session runs without the per-inference expansion
    (the file on disk stays small; memory holds int8). Returns how many."""
    G = Graph(model)
    count = 0
    for q in list(G.g.node):
        if q.op_type != "QuantizeLinear":
            continue
        dq = G.producer.get(q.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in G.inits:
            continue
        t = G.inits[dq.input[0]]
        if t.data_type not in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            continue
        codes = numpy_helper.to_array(t).astype(np.int32)
        z4 = G.const(dq.input[2]).astype(np.int32)
        z8 = G.const(q.input[2])
        shape = [1] * codes.ndim
        if z4.size > 1:
            shape[G.axis(dq) % codes.ndim] = -1
        # same scale on both sides: int8 code = int4 code - int4 zero point + int8 zero point
        q8 = (codes - z4.reshape(shape) + z8.astype(np.int32).reshape(shape)).astype(z8.dtype)
        G.rewire(q.output[0], G.add_init(dq.input[0] + "_unpacked", q8))
        count += 1
    if count:
        prune_unused(model)
    return count
