"""Attention heads inside a loaded ``.pt2`` program (``core.graph.ProgramModule``).

A program keeps no attention module: its graph calls the projections (real ``nn.Linear`` modules again after
``modules_from_program``), reshapes their outputs into heads with sizes that are constants of the graph
(``view(x, [s0, 64, -1, 8])``, ``view(x, [16, s0*4, 8])``, ``unflatten(qkv, -1, [3, 32])``), and calls
``aten.scaled_dot_product_attention``. Removing heads means slicing the projections *and* rewriting those
constants, so this module follows where the heads are through the graph:

- from each ``scaled_dot_product_attention`` it walks back from the query, key and value to the Linear that made
  them, and forward from its output to the Linear that reads it, through layout ops only (view/reshape/unflatten,
  transpose/permute, select/split of a packed q|k|v projection, squeeze/unsqueeze, contiguous, scaling);
- along each path it tracks every axis as a product of *factors* (the head count ``H``, the head width ``D``, the
  packed part ``P``, and sizes it does not need to know), measured on one run of the program, so it knows which
  size argument of which reshape holds ``H`` (``64`` in ``[s0, 64, -1, 8]`` does not; ``s0*4`` does);
- the layout it infers is checked by experiment: reversing the order of the heads in the projections (and of the
  output projection's columns) must leave the model's output unchanged. An attention whose layout it cannot
  follow (rotary embeddings, grouped-query attention, a per-head mask) is left whole, with the reason.

A unit here is one attention's heads, scored by the L2 norm of their projection rows and output columns like the
module-level units of ``blocks.py``; pruning slices the Linears and rewrites the recorded sizes (``H`` -> kept).
"""
from __future__ import annotations

import math
import operator
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn

from ..core import graph as G
from ..core.context import removing

_VIEWS = {"view", "reshape", "_unsafe_view", "unflatten", "flatten", "squeeze", "unsqueeze"}
_SAME = {"contiguous", "clone", "alias", "dropout", "detach", "_to_copy", "to"}
_SCALE = {"mul", "div"}


class _NoLayout(Exception):
    """The heads of an attention cannot be followed through this op."""


def _op(node) -> str:
    if node.op == "call_function":
        if node.target is operator.getitem:
            return "getitem"
        return G.op_name(node)
    return node.op


def _record_shapes(model: nn.Module, example) -> dict:
    """Every ProgramModule inside ``model`` -> {node name: output shape (or tuple of shapes)} on one run."""
    shapes: dict = {}
    hooks = []

    class _Rec(fx.Interpreter):
        def __init__(self, gm, out):
            super().__init__(gm)
            self.out = out

        def run_node(self, n):
            r = super().run_node(n)
            if isinstance(r, torch.Tensor):
                self.out[n.name] = tuple(r.shape)
            elif isinstance(r, (tuple, list)) and r and all(isinstance(t, torch.Tensor) for t in r):
                self.out[n.name] = tuple(tuple(t.shape) for t in r)
            return r

    def record(rec):
        def hook(mod, args):
            _Rec(mod.gm, rec).run(*args)  # the module's own forward runs after it, unchanged
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, G.ProgramModule):
            hooks.append(mod.register_forward_pre_hook(record(shapes.setdefault(name, {}))))
    with removing(hooks), torch.no_grad():
        model(*example)
    return shapes


def _regroup(axes: list, shape: tuple) -> list:
    """The factors of ``axes`` laid out again into ``shape`` (a view): in order, a head factor never split."""
    todo = [f for ax in axes for f in ax if not (f[0] == "o" and f[1] == 1)]
    out = []
    for s in shape:
        got, prod = [], 1
        while prod < s:
            if not todo:
                raise _NoLayout("a reshape the head sizes do not divide")
            tag, n = todo.pop(0)
            if s % (prod * n) == 0:
                got.append((tag, n))
                prod *= n
            elif tag == "o" and (s // prod) and n % (s // prod) == 0 and s % prod == 0:
                got.append(("o", s // prod))
                todo.insert(0, ("o", n // (s // prod)))
                prod = s
            else:
                raise _NoLayout("a reshape that splits the heads or their width")
        out.append(got)
    if any(not (f[0] == "o" and f[1] == 1) for f in todo):
        raise _NoLayout("a reshape the head sizes do not divide")
    return out


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _step(node, axes: list, part, shapes: dict):
    """The axes (and packed part) of ``node``'s output given those of its first input."""
    op, a = _op(node), node.args
    shape = shapes.get(node.name)
    if op in _VIEWS:
        return _regroup(axes, shape), part
    if op in _SAME:
        return axes, part
    if op in _SCALE:
        if isinstance(a[1], fx.Node):
            raise _NoLayout(f"a {op} by a tensor")
        return axes, part
    if op == "transpose":
        i, j = _dim(a[1], len(axes)), _dim(a[2], len(axes))
        axes = list(axes)
        axes[i], axes[j] = axes[j], axes[i]
        return axes, part
    if op == "permute":
        return [axes[_dim(d, len(axes))] for d in a[1]], part
    if op == "select":
        d = _dim(a[1], len(axes))
        tags = {t for t, _ in axes[d]}
        if axes[d] and tags == {"P"}:
            return axes[:d] + axes[d + 1:], a[2]
        if tags <= {"o"}:
            return axes[:d] + axes[d + 1:], part
        raise _NoLayout("a select across heads")
    if op in ("split", "split_with_sizes", "chunk", "unbind"):
        at = 1 if op == "unbind" else 2
        d = a[at] if len(a) > at else node.kwargs.get("dim", 0)
        return ("split", axes, _dim(d, len(axes))), part
    raise _NoLayout(f"aten.{op}")


def _getitem(split, i: int, shape: tuple, part):
    """The axes of item ``i`` of a split/chunk/unbind along ``split``'s axis (a packed projection's parts)."""
    _, axes, d = split
    ax = axes[d]
    tags = [t for t, _ in ax]
    if len(shape) == len(axes) - 1:  # unbind: the axis is gone
        if tags == ["P"]:
            return axes[:d] + axes[d + 1:], i
        if set(tags) <= {"o"}:
            return axes[:d] + axes[d + 1:], part
        raise _NoLayout("an unbind across heads")
    if tags and tags[0] == "P":
        if shape[d] == math.prod(k for _, k in ax[1:]):
            return axes[:d] + [ax[1:]] + axes[d + 1:], i
        raise _NoLayout("a split of a packed projection other than into its parts")
    if set(tags) <= {"o"}:
        return axes[:d] + [[("o", shape[d])]] + axes[d + 1:], part
    raise _NoLayout("a split across heads")


def _back(node: fx.Node) -> tuple[list, fx.Node]:
    """The layout ops from the Linear that made ``node`` (exclusive) to ``node`` (inclusive), and that Linear."""
    chain = []
    cur = node
    while True:
        if cur.op == "call_module":
            return chain[::-1], cur
        op = _op(cur)
        if op not in _VIEWS | _SAME | _SCALE | {"transpose", "permute", "select", "getitem", "split",
                                                  "split_with_sizes", "chunk", "unbind"}:
            raise _NoLayout(f"the query/key/value passes through aten.{op}")
        chain.append(cur)
        cur = cur.args[0]
        if not isinstance(cur, fx.Node):
            raise _NoLayout("a query/key/value that is not computed from a Linear")


def _follow(chain: list, axes: list, shapes: dict, views: dict) -> tuple[list, Optional[int]]:
    """Run the factor tracking along ``chain``; record each reshape's output axes in ``views``."""
    part, split = None, None
    for n in chain:
        op = _op(n)
        if op == "getitem":
            if split is None:
                raise _NoLayout("an index into a non-split value")
            axes, part = _getitem(split, n.args[1], shapes[n.name], part)
            split = None
            continue
        r, part = _step(n, axes, part, shapes)
        if isinstance(r, tuple):
            split = r
            continue
        axes = r
        if op in ("view", "reshape", "_unsafe_view", "unflatten"):
            views[n.name] = axes
    return axes, part


def _heads_of(tags: list) -> bool:
    return any(t in ("H", "D", "P") for ax in tags for t, _ in ax)


class ProgramHeads:
    """One attention of a program: where its heads are (projections, rows, the reshapes to rewrite)."""

    def __init__(self, prog: str, sdpa: str, h: int, d: int, qkv: list, out: str, views: dict):
        self.prog, self.sdpa, self.h, self.d = prog, sdpa, h, d
        self.qkv = qkv  # [(module name, part or None, parts)] for q, k, v
        self.out, self.views = out, views
        def path(m: str) -> str:  # the module's name in the whole model
            return ".".join(p for p in (prog, "gm", m) if p)

        self.projections = tuple(dict.fromkeys(path(m) for m, _, _ in qkv)) + (path(out),)
        parent = out.rpartition(".")[0]
        self.name = path(parent) if parent else self.projections[-1]

    def packed(self) -> dict[str, int]:
        """The packed q|k|v projections of this attention (full module name -> parts)."""
        return {".".join(p for p in (self.prog, "gm", m) if p): parts for m, _, parts in self.qkv if parts > 1}

    def _mods(self, model):
        pm = model.get_submodule(self.prog) if self.prog else model
        return pm, {m: pm.gm.get_submodule(m) for m, _, _ in self.qkv} | {self.out: pm.gm.get_submodule(self.out)}

    def _rows(self, order: torch.Tensor, part: Optional[int]) -> torch.Tensor:
        """Projection rows of the heads in ``order`` (of packed part ``part``, or of a projection of its own)."""
        base = (order[:, None] * self.d + torch.arange(self.d)[None]).reshape(-1)
        if part is None:
            return base
        return base + part * self.h * self.d

    def score(self, model) -> torch.Tensor:
        _, mods = self._mods(model)
        s = torch.zeros(self.h)
        for m, part, _ in self.qkv:
            w = mods[m].weight.detach()
            rows = self._rows(torch.arange(self.h), part)
            s += w[rows].pow(2).sum(1).reshape(self.h, self.d).sum(1)
        return s + mods[self.out].weight.detach().pow(2).sum(0).reshape(self.h, self.d).sum(1)

    def _slice(self, model, order: torch.Tensor) -> None:
        _, mods = self._mods(model)
        done = set()
        for m, part, parts in self.qkv:
            if m in done:
                continue
            done.add(m)
            lin = mods[m]
            rows = torch.cat([self._rows(order, p) for p in range(parts)]) if parts > 1 else self._rows(order, None)
            with torch.no_grad():
                lin.weight = nn.Parameter(lin.weight.detach()[rows].clone())
                if lin.bias is not None:
                    lin.bias = nn.Parameter(lin.bias.detach()[rows].clone())
            lin.out_features = len(rows)
        o = mods[self.out]
        cols = self._rows(order, None)
        with torch.no_grad():
            o.weight = nn.Parameter(o.weight.detach()[:, cols].clone())
        o.in_features = len(cols)

    def apply(self, model, keep: torch.Tensor) -> None:
        self._slice(model, keep)
        if len(keep) != self.h:
            pm, _ = self._mods(model)
            self._rewrite(pm.gm, len(keep))

    def _rewrite(self, gm: fx.GraphModule, kept: int) -> None:
        nodes = {n.name: n for n in gm.graph.nodes}
        for name, axes in self.views.items():
            node = nodes[name]
            op = _op(node)
            pos = 2 if op == "unflatten" else 1
            sizes = list(node.args[pos])
            first = _dim(node.args[1], len(axes) - len(sizes) + 1) if op == "unflatten" else 0  # of the input
            for i, v in enumerate(sizes):
                if not any(t == "H" for t, _ in axes[first + i]) or (isinstance(v, int) and v == -1):
                    continue
                if isinstance(v, int):
                    sizes[i] = v // self.h * kept
                else:
                    with gm.graph.inserting_before(node):
                        times = gm.graph.call_function(operator.mul, (v, kept))
                        sizes[i] = gm.graph.call_function(operator.floordiv, (times, self.h))
            args = list(node.args)
            args[pos] = sizes
            node.args = tuple(args)
        gm.recompile()


def _find(prog: str, gm: fx.GraphModule, shapes: dict) -> tuple[list, dict]:
    units, skipped = [], {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or "scaled_dot_product" not in G.op_name(node):
            continue
        try:
            units.append(_attention(prog, gm, node, shapes))
        except _NoLayout as e:
            skipped[f"{prog}:{node.name}" if prog else node.name] = f"attention heads left whole: {e}"
    return units, skipped


def _attention(prog: str, gm: fx.GraphModule, sdpa: fx.Node, shapes: dict) -> ProgramHeads:
    q_shape = shapes[sdpa.args[0].name]
    if len(q_shape) < 3 or sdpa.kwargs.get("enable_gqa"):
        raise _NoLayout("grouped-query attention")
    h, d = q_shape[-3], q_shape[-1]
    if h < 2:
        raise _NoLayout("one head")
    if shapes[sdpa.args[1].name][-3] != h or shapes[sdpa.args[2].name][-3] != h or shapes[sdpa.args[2].name][-1] != d:
        raise _NoLayout("keys/values with other head counts or widths (grouped-query attention)")
    mask = sdpa.args[3] if len(sdpa.args) > 3 else sdpa.kwargs.get("attn_mask")
    if isinstance(mask, fx.Node) and len(shapes[mask.name]) >= 3 and shapes[mask.name][-3] != 1:
        raise _NoLayout("a per-head attention mask")
    views: dict = {}
    qkv = []
    for arg in sdpa.args[:3]:
        chain, lin = _back(arg)
        mod = gm.get_submodule(lin.target)
        if not isinstance(mod, nn.Linear):
            raise _NoLayout(f"a query/key/value made by {type(mod).__name__}, not a Linear")
        f = mod.out_features
        if f % (h * d):
            raise _NoLayout("a projection width that is not a multiple of heads x head width")
        parts = f // (h * d)
        lead = [[("o", s)] for s in shapes[lin.name][:-1]]
        last = ([("P", parts)] if parts > 1 else []) + [("H", h), ("D", d)]
        axes, part = _follow(chain, lead + [last], shapes, views)
        if parts > 1 and part is None:
            raise _NoLayout("a packed projection whose parts are not taken apart")
        if axes[-1] != [("D", d)] or axes[-3] != [("H", h)] or _heads_of(axes[:-3] + [axes[-2]]):
            raise _NoLayout("heads that do not reach the attention as [..., heads, length, width]")
        qkv.append((lin.target, part, parts))
    for m, part, parts in qkv:
        used = {p for mm, p, _ in qkv if mm == m}
        if parts > 1 and used != set(range(parts)):
            raise _NoLayout("a packed projection with parts that are not this attention's query/key/value")
    # forward: the attention's output to the Linear that reads it
    axes = [[("o", s)] for s in shapes[sdpa.name]]
    axes[-3], axes[-1] = [("H", h)], [("D", d)]
    chain, cur = [], sdpa
    while True:
        users = list(cur.users)
        if len(users) != 1:
            raise _NoLayout("an attention output used more than once")
        nxt = users[0]
        if nxt.op == "call_module":
            break
        op = _op(nxt)
        if op not in _VIEWS | _SAME | _SCALE | {"transpose", "permute"} or nxt.args[0] is not cur:
            raise _NoLayout(f"an attention output that reaches aten.{op} before a Linear")
        chain.append(nxt)
        cur = nxt
    out_mod = gm.get_submodule(nxt.target)
    axes, _ = _follow(chain, axes, shapes, views)
    if not isinstance(out_mod, nn.Linear) or axes[-1] != [("H", h), ("D", d)] or _heads_of(axes[:-1]):
        raise _NoLayout("an attention output that does not reach a Linear as [..., heads x width]")
    return ProgramHeads(prog, sdpa.name, h, d, qkv, nxt.target, views)


def program_heads(model: nn.Module, example) -> tuple[list[ProgramHeads], dict]:
    """The attentions of every program inside ``model`` whose heads can be removed (each checked by
    experiment: reversing its heads leaves the output unchanged), and the reasons for the others."""
    if not G.holds_program(model):
        return [], {}
    shapes = _record_shapes(model, example)
    found, skipped = [], {}
    for prog, per in shapes.items():
        pm = model.get_submodule(prog) if prog else model
        units, why = _find(prog, pm.gm, per)
        found += units
        skipped.update(why)
    if not found:
        return [], skipped
    with torch.no_grad():
        ref = model(*example)
        ok = []
        for u in found:
            rev = torch.arange(u.h - 1, -1, -1)
            u._slice(model, rev)
            same = torch.allclose(model(*example), ref, rtol=1e-4, atol=1e-5)
            u._slice(model, rev)  # reversing twice gives the original order back
            if same:
                ok.append(u)
            else:
                skipped[u.name] = "attention heads left whole: reversing the heads changed the output (the " \
                                  "layout of its projections was not recognised)"
    return ok, skipped
