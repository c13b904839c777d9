"""Channel-coupling analysis on a model's graph: which output channels of
which layers must be removed together so that the network stays consistent.

The graph is torch.fx's where fx traces the model (the zoo: module calls), and
otherwise its torch.export capture (``core.graph.capture``: Hugging Face CNNs,
whose forwards branch on shapes or compute paddings with ``int()``), where
layers are ATen ops (``aten.conv2d(x, weight, ...)``) on lifted parameters and
each op is mapped back to the module that owns its weight. The ATen ops also
appear in the fx graphs of loaded ``.pt2`` programs. Both views feed the same
analysis below.

Every Conv/Linear output starts a *group* of channels. Element-wise ops,
BatchNorm, LayerNorm, pooling and depthwise convs carry a group through;
residual additions merge the groups they add; concatenations along the
channel dimension lay groups side by side; Flatten expands each channel into
a block of features. Consumers (the next Conv/Linear) record where each group
sits in their input. A group is *blocked* (left alone, with the reason in the
report) when it reaches the model output, meets an op whose channel semantics
we do not know (permute, slicing, a reshape with hard-coded sizes), or belongs
to a layer shared between two call sites. A parameter combined element-wise
with a group's channels (ConvNeXt's layer scale, a bias added by hand) is
sliced with it (role ``vec``).

Why our own analysis rather than Torch-Pruning's dependency graph: we measured
it leaving the main group of a residual + concat + depthwise toy unpruned
(the same group appears twice in one concat), and the analysis is small once
shapes come from ``ShapeProp``.
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..core import graph as G
from ..core.errors import ConfigError
from ..core.graph import trace

_UNARY_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
                  nn.LeakyReLU, nn.ELU, nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity,
                  nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                  nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_UNARY_FUNCS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh,
                F.hardswish, F.leaky_relu, F.elu, F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d,
                F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d,
                F.adaptive_max_pool2d}
_UNARY_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float", "detach"}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
           torch.div, operator.iadd, operator.imul}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}
_REDUCE = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}
# ATen ops (captured graphs, .pt2 programs) by name without overload (core.graph.op_name)
_ATEN_UNARY = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "gelu", "gelu_", "silu", "silu_", "sigmoid",
               "sigmoid_", "tanh", "tanh_", "hardswish", "hardswish_", "hardsigmoid", "leaky_relu", "elu", "mish",
               "dropout", "dropout_", "feature_dropout", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
               "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d", "clone",
               "contiguous", "alias", "detach", "_to_copy", "to"}
_ATEN_BINARY = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}


@dataclasses.dataclass
class Seg:
    """``size`` channels of group ``gid`` (None: a fixed, unprunable block), each
    spread over ``expand`` consecutive features (after a Flatten)."""

    gid: Optional[int]
    size: int
    expand: int = 1


@dataclasses.dataclass
class Chan:
    dim: int  # which tensor dimension carries the channels
    segs: list[Seg]


@dataclasses.dataclass
class Use:
    """A module that indexes a group: role ``in`` (input channels of a Conv/Linear),
    ``bn``/``ln``/``dw`` (per-channel modules carried along), ``vec`` (``name`` is a parameter or buffer path
    whose dimension ``dim`` runs along the channels)."""

    name: str
    role: str
    gid: int
    offset: int
    expand: int = 1
    dim: int = 0


class ChannelGraph:
    """The coupled channel groups of ``model`` for the given example inputs."""

    def __init__(self, model: nn.Module, example_inputs, prunable: set[str], graph: str = "fx"):
        self.model = model
        self.graph_kind = graph
        self._param: dict[fx.Node, str] = {}  # graph node -> the parameter/buffer path it reads
        if graph == "fx":
            self.gm = trace(model)
            try:
                ShapeProp(self.gm).propagate(*example_inputs)
            except Exception as e:  # noqa: BLE001
                raise ConfigError(f"cannot run {type(model).__name__} on the example inputs for structured "
                                  f"pruning: {str(e).splitlines()[0][:150]}") from None
            for node in self.gm.graph.nodes:
                if node.op == "get_attr" and isinstance(_tensor_at(model, node.target), torch.Tensor):
                    self._param[node] = node.target
        else:  # torch.export: the capture runs on a copy with the same module names
            cap = G.capture(model, example_inputs, what="structured pruning")
            self.gm = cap.program.graph_module
            self._param = {n: cap.params[n.name] for n in cap.graph.nodes
                           if n.op == "placeholder" and n.name in cap.params}
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.producer: dict[int, list[str]] = {}
        self.blocked: dict[int, list[str]] = {}
        self.uses: list[Use] = []
        self.calls: dict[str, int] = {}
        self.attention: list[str] = []
        self.prunable = prunable
        self._analyse()

    # -- union-find over group ids -------------------------------------------------
    def _new(self, size: int, producer: str) -> int:
        gid = len(self.parent)
        self.parent[gid], self.size[gid], self.producer[gid], self.blocked[gid] = gid, size, [producer], []
        if producer not in self.prunable:
            self.blocked[gid].append(f"{producer} is not among the targets")
        return gid

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def _union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[b] = a
        self.producer[a] += self.producer.pop(b)
        self.blocked[a] += self.blocked.pop(b)

    def _block(self, chan: Optional[Chan], why: str) -> None:
        if chan is None:
            return
        for s in chan.segs:
            if s.gid is not None and why not in self.blocked[self.find(s.gid)]:
                self.blocked[self.find(s.gid)].append(why)

    def _use(self, name: str, role: str, chan: Chan, dim: int = 0) -> None:
        off = 0
        for s in chan.segs:
            if s.gid is not None:
                self.uses.append(Use(name, role, s.gid, off, s.expand, dim))
            off += s.size * s.expand

    # -- analysis ------------------------------------------------------------------
    def _analyse(self) -> None:
        meta: dict[fx.Node, Optional[Chan]] = {}
        self._metas = meta
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                self.calls[node.target] = self.calls.get(node.target, 0) + 1
        for node in self.gm.graph.nodes:
            if node.op == "output":
                for a in node.all_input_nodes:
                    self._block(meta.get(a), "reaches the model output")
                continue
            ins = [meta.get(a) for a in node.all_input_nodes]
            if self._shape(node) is None:
                # non-tensor results (x.size(0), tuples) carry no channels; tuples of tensors are opaque
                if node.op == "call_module" and isinstance(self.gm.get_submodule(node.target), nn.MultiheadAttention):
                    self._attention(node, ins)
                elif node.op == "call_function" and node.target is operator.getitem:
                    pass
                elif node.op in ("call_module", "call_function", "call_method") and not _is_shape_query(node):
                    for c in ins:
                        self._block(c, f"passes through {_describe(node)}")
                meta[node] = None
                continue
            try:
                meta[node] = self._visit(node, ins)
            except _Opaque as e:
                for c in ins:
                    self._block(c, str(e) or f"passes through {_describe(node)}")
                meta[node] = None
        for name, n in self.calls.items():
            if n > 1:
                for gid in list(self.producer):
                    if name in self.producer[gid]:
                        self.blocked[gid].append(f"{name} is called {n} times (shared weights)")
                for u in self.uses:
                    if u.name == name:
                        self.blocked[self.find(u.gid)].append(f"{name} is called {n} times (shared weights)")

    def _shape(self, node) -> Optional[tuple]:
        """The shape of a tensor-valued node (a symbolic size, the batch of a capture, as -1); None otherwise."""
        if not isinstance(node, fx.Node):
            return None
        if self.graph_kind == "fx":
            tm = node.meta.get("tensor_meta")
            return tuple(int(d) for d in tm.shape) if isinstance(tm, TensorMetadata) else None
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            return None
        return tuple(d if isinstance(d, int) else -1 for d in val.shape)

    def _visit(self, node: fx.Node, ins: list[Optional[Chan]]) -> Optional[Chan]:
        shape = self._shape(node)
        if node.op in ("placeholder", "get_attr"):
            return None
        x = ins[0] if ins else None
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            return self._visit_aten(node, x, ins, shape)
        if node.op == "call_module":
            mod = self.gm.get_submodule(node.target)
            name = node.target
            if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
                return self._conv(name, mod, x)
            if isinstance(mod, nn.Linear):
                return self._linear(name, mod, x, shape)
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if x is not None:
                    if x.dim != 1:
                        raise _Opaque(f"{name} normalises a non-channel dimension")
                    self._use(name, "bn", x)
                return x
            if isinstance(mod, nn.LayerNorm):
                if x is not None:
                    if len(mod.normalized_shape) != 1 or x.dim != len(shape) - 1:
                        raise _Opaque(f"{name} normalises more than the channel dimension")
                    if not mod.elementwise_affine:
                        raise _Opaque(f"{name} has no per-channel parameters to prune")
                    self._use(name, "ln", x)
                return x
            if isinstance(mod, _UNARY_MODULES):
                return x
            if isinstance(mod, nn.Flatten):
                return self._flatten(node, x, mod.start_dim, mod.end_dim)
            raise _Opaque(f"passes through {type(mod).__name__} {name}")
        if node.op == "call_function" and node.target in _UNARY_FUNCS or \
                node.op == "call_method" and node.target in _UNARY_METHODS:
            return x
        if node.op == "call_function" and node.target in _BINARY or \
                node.op == "call_method" and node.target in _BINARY_METHODS:
            return self._binary(node, shape)
        if node.target in (torch.cat, torch.concat):
            return self._cat(node, shape)
        if node.target in (torch.flatten, "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self._flatten(node, x, start, end)
        if node.target in ("view", "reshape") or node.target is torch.reshape:
            return self._reshape(node, x, shape)
        if node.target in _REDUCE or node.target in _REDUCE_METHODS:
            return self._reduce(node, x, shape)
        if x is None and all(c is None for c in ins):
            return None
        raise _Opaque()

    def _conv(self, name: str, mod: nn.Module, x: Optional[Chan]) -> Optional[Chan]:
        """A convolution (an fx module call or an ATen op mapped to its module): a new group, or, depthwise, the
        input's group carried through."""
        if mod.groups == 1:
            if x is not None:
                if x.dim != 1:
                    raise _Opaque(f"{name} convolves a tensor whose channels are not in dim 1")
                self._use(name, "in", x)
            return Chan(1, [Seg(self._new(mod.out_channels, name), mod.out_channels)])
        if mod.groups == mod.in_channels == mod.out_channels and x is not None and x.dim == 1:
            self._use(name, "dw", x)
            return x
        raise _Opaque(f"{name} is a grouped convolution (groups={mod.groups})")

    def _linear(self, name: str, mod: nn.Module, x: Optional[Chan], shape) -> Chan:
        if x is not None:
            if x.dim != len(shape) - 1:
                raise _Opaque(f"{name} is applied to a non-channel dimension")
            self._use(name, "in", x)
        return Chan(len(shape) - 1, [Seg(self._new(mod.out_features, name), mod.out_features)])

    # -- ATen ops (the torch.export capture, and .pt2 programs) ------------------------------------------------------
    def _layer(self, node: fx.Node, types: tuple) -> str:
        """The module of ``types`` whose ``weight`` an ATen conv/linear op reads; opaque otherwise."""
        path = self._param.get(node.args[1]) if len(node.args) > 1 else None
        parent, _, attr = (path or "").rpartition(".")
        mod = _module_at(self.model, parent) if path else None
        if attr != "weight" or not isinstance(mod, types):
            raise _Opaque(f"meets {_describe(node)} on weights that no {types[0].__name__} module owns")
        bias = node.args[2] if len(node.args) > 2 else None
        if bias is not None and self._param.get(bias) != f"{parent}.bias":
            raise _Opaque(f"meets {_describe(node)} whose bias is not its module's")
        self.calls[parent] = self.calls.get(parent, 0) + 1
        return parent

    def _visit_aten(self, node: fx.Node, x: Optional[Chan], ins, shape) -> Optional[Chan]:
        op, args = G.op_name(node), node.args
        if op in ("conv1d", "conv2d"):
            name = self._layer(node, (nn.Conv1d, nn.Conv2d))
            return self._conv(name, self.model.get_submodule(name), x)
        if op == "linear":
            name = self._layer(node, (nn.Linear,))
            return self._linear(name, self.model.get_submodule(name), x, shape)
        if op == "batch_norm":
            if x is None:
                return None
            if x.dim != 1:
                raise _Opaque(f"{_describe(node)} normalises a non-channel dimension")
            self._per_channel(node, args[1:5], nn.modules.batchnorm._BatchNorm, "bn", x)
            return x
        if op == "layer_norm":
            if x is None:
                return None
            if len(args[1]) != 1 or x.dim != len(shape) - 1:
                raise _Opaque(f"{_describe(node)} normalises more than the channel dimension")
            if (len(args) < 3 or args[2] is None):
                raise _Opaque(f"{_describe(node)} has no per-channel parameters to prune")
            self._per_channel(node, args[2:4], nn.LayerNorm, "ln", x, loose_ok=False)
            return x
        if op in _ATEN_UNARY:
            return x
        if op in ("pad", "constant_pad_nd"):
            if x is not None and x.dim >= len(shape) - len(args[1]) // 2:
                raise _Opaque(f"is padded along the channels in {_describe(node)}")
            return x
        if op in _ATEN_BINARY:
            return self._binary(node, shape)
        if op in ("cat", "concat"):
            return self._cat(node, shape)
        if op == "flatten":
            return self._flatten(node, x, args[1] if len(args) > 1 else 0, args[2] if len(args) > 2 else -1)
        if op in ("view", "reshape", "_unsafe_view"):
            return self._reshape(node, x, shape)
        if op in ("mean", "sum", "amax"):
            return self._reduce(node, x, shape)
        if op in ("permute", "transpose"):
            if x is None:
                return None
            nd = len(shape)
            perm = list(range(nd))
            if op == "permute":
                perm = [d % nd for d in args[1]]
            else:
                a, b = args[1] % nd, args[2] % nd
                perm[a], perm[b] = b, a
            return Chan(perm.index(x.dim), x.segs)
        if op == "unsqueeze":
            if x is None:
                return None
            d = args[1] % len(shape)
            return Chan(x.dim + (1 if d <= x.dim else 0), x.segs)
        if x is None and all(c is None for c in ins):
            return None
        raise _Opaque()

    def _per_channel(self, node, tensors, types, role: str, x: Chan, loose_ok: bool = True) -> None:
        """A normalisation op's per-channel tensors: one use of their module (``role``) when they are its own,
        else (``loose_ok``) a ``vec`` use of each (a functional batch_norm of a .pt2 program)."""
        paths = [self._param.get(t) if isinstance(t, fx.Node) else None for t in tensors]
        if any(isinstance(t, fx.Node) and p is None for t, p in zip(tensors, paths)):
            raise _Opaque(f"{_describe(node)} takes per-channel tensors computed in the forward")
        parents = {p.rpartition(".")[0] for p in paths if p}
        if len(parents) == 1 and isinstance(_module_at(self.model, next(iter(parents))), types):
            self._use(next(iter(parents)), role, x)
            return
        if not loose_ok:
            raise _Opaque(f"{_describe(node)} has a fixed normalised shape outside a {types.__name__} module")
        for p in paths:
            if p:
                self._use(p, "vec", x)

    def _attention(self, node: fx.Node, ins) -> None:
        mod = self.gm.get_submodule(node.target)
        for c in ins:
            self._block(c, f"feeds the attention {node.target} (its embedding width stays; its heads can be pruned)")
        if mod.batch_first and mod._qkv_same_embed_dim and mod.num_heads > 1:
            self.attention.append(node.target)

    def _binary(self, node: fx.Node, shape) -> Optional[Chan]:
        tensors = [a for a in node.args if self._shape(a) is not None]
        chans = []
        for a in tensors:
            chans.append((self._meta_of(a), self._shape(a), a))
        tracked = [(c, s) for c, s, _ in chans if c is not None]
        if not tracked:
            return None
        dim = tracked[0][0].dim
        out_dim = dim + (len(shape) - len(tracked[0][1]))
        ref = tracked[0][0]
        width = sum(seg.size * seg.expand for seg in ref.segs)
        sliced = []
        for c, s, a in chans:
            if c is None:
                # a fixed operand is fine when it broadcasts over the channels, or when it is a parameter with one
                # value per channel (sliced with them)
                k = out_dim - (len(shape) - len(s))
                if 0 <= k < len(s) and s[k] != 1:
                    if a in self._param and s[k] == width:
                        sliced.append((self._param[a], k))
                    else:
                        raise _Opaque(f"is combined with a fixed tensor in {_describe(node)}")
        for c, s in tracked[1:]:
            if c.dim + (len(shape) - len(s)) != out_dim or len(c.segs) != len(ref.segs) or any(
                    a.size != b.size or a.expand != b.expand for a, b in zip(c.segs, ref.segs)):
                raise _Opaque(f"meets differently laid-out channels in {_describe(node)}")
            for a, b in zip(c.segs, ref.segs):
                if (a.gid is None) != (b.gid is None):
                    raise _Opaque(f"is added to fixed channels in {_describe(node)}")
                if a.gid is not None:
                    self._union(b.gid, a.gid)
        for path, k in sliced:
            self._use(path, "vec", ref, dim=k)
        return Chan(out_dim, list(ref.segs))

    def _meta_of(self, a: fx.Node) -> Optional[Chan]:
        return self._metas.get(a)

    def _cat(self, node: fx.Node, shape) -> Optional[Chan]:
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        dim = dim % len(shape)
        chans = [self._meta_of(p) for p in parts]
        if all(c is None for c in chans):
            return None
        if any(c is not None and c.dim != dim for c in chans):
            raise _Opaque(f"is concatenated along a non-channel dimension in {_describe(node)}")
        segs = []
        for p, c in zip(parts, chans):
            segs += c.segs if c is not None else [Seg(None, int(self._shape(p)[dim]))]
        return Chan(dim, segs)

    def _flatten(self, node, x: Optional[Chan], start: int, end: int) -> Optional[Chan]:
        if x is None:
            return None
        in_shape = self._shape(node.all_input_nodes[0])
        nd = len(in_shape)
        start, end = start % nd, end % nd
        if x.dim < start:
            return x
        if x.dim > end:
            return Chan(x.dim - (end - start), x.segs)
        inner = 1
        for d in range(x.dim + 1, end + 1):
            inner *= int(in_shape[d])
        if x.dim != start:
            raise _Opaque(f"is flattened together with a leading dimension in {_describe(node)}")
        return Chan(start, [Seg(s.gid, s.size, s.expand * inner) for s in x.segs])

    def _reshape(self, node, x: Optional[Chan], shape) -> Optional[Chan]:
        if x is None:
            return None
        sizes = node.args[1:] if node.op == "call_method" else node.args[1]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = sizes[0]
        in_shape = self._shape(node.all_input_nodes[0])
        literal = [s for s in sizes[1:] if isinstance(s, int) and s != -1]
        if x.dim == 1 and len(shape) == 2 and shape[0] == in_shape[0] and not literal:
            return self._flatten(node, x, 1, -1)
        raise _Opaque(f"is reshaped with fixed sizes in {_describe(node)}")

    def _reduce(self, node, x: Optional[Chan], shape) -> Optional[Chan]:
        if x is None:
            return None
        in_shape = self._shape(node.all_input_nodes[0])
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dims is None:
            raise _Opaque(f"is reduced over every dimension in {_describe(node)}")
        dims = [d % len(in_shape) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
        if x.dim in dims:
            raise _Opaque(f"is summed over the channels in {_describe(node)}")
        if len(shape) == len(in_shape):
            return x
        return Chan(x.dim - sum(d < x.dim for d in dims), x.segs)

    # -- results -------------------------------------------------------------------
    def groups(self) -> dict[int, dict]:
        """Root id -> {size, producers, uses, blocked}."""
        out = {}
        order = {n: i for i, (n, _) in enumerate(self.model.named_modules())}
        for gid in self.producer:
            r = self.find(gid)
            out[r] = {"size": self.size[r], "producers": sorted(self.producer[r], key=order.get), "blocked": sorted(set(self.blocked[r])),
                      "uses": [u for u in self.uses if self.find(u.gid) == r]}
        return out


class _Opaque(Exception):
    pass


def _describe(node: fx.Node) -> str:
    t = node.target
    return f"{node.op} {getattr(t, '__name__', t)}"


def _is_shape_query(node: fx.Node) -> bool:
    return node.op == "call_method" and node.target in ("size", "dim") or \
        node.op == "call_function" and node.target in (getattr, torch.ops.aten.sym_size.int)


def _module_at(model: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _tensor_at(model: nn.Module, path: str):
    parent, _, attr = path.rpartition(".")
    mod = _module_at(model, parent)
    return getattr(mod, attr, None) if mod is not None else None

