"""ONNX graph passes that turn an exported fake-quant (QDQ) graph into a
deployable int8 file: weights stored as int8 initializers, biases as int32,
so that the file really shrinks and ONNX Runtime selects its integer kernels."""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper


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
        for c in G.consumers.get(n.output[0], []):
            for k, inp in enumerate(c.input):
                if inp == n.output[0]:
                    c.input[k] = name
        remove.append(n)
        folded += 1
    for n in remove:
        G.g.node.remove(n)
    prune_unused(model)
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
        q = np.clip(np.round(b / s), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
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
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        m = onnx.load(so.optimized_model_filepath)
    return [n.op_type for n in m.graph.node]
