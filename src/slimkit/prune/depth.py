"""Elastic depth (NAS): whole residual blocks dropped from the model.

A block can go when the network around it stays the same shape without it and its removal leaves an identity: the
block is one entry of an ``nn.Sequential`` or ``nn.ModuleList`` (the container the model's code loops over), its
input and output have the same shape, and it is residual, found on the ``torch.export`` capture (``core.graph``):
an ``add`` inside the block takes the block's input (``x + f(x)`` written in the block, as in torchvision's
``BasicBlock`` or ``nn.TransformerEncoderLayer``), or an ``add`` just outside takes both its input and its output
(``x = x + block(x)`` written in the model's loop, as in MobileNetV2-style code). Dropping such a block turns
``x + f(x)`` into ``x``: the candidate starts as the teacher minus one residual branch, which is what
Once-for-All's elastic depth and stochastic depth rely on, and the stage's distillation fine-tune recovers the rest.

The block is removed from its container (not replaced by a stub), so the exported graph really is shorter; a
``num_layers`` attribute beside the container (``nn.TransformerEncoder``) is updated. A block that is not residual
is never offered: dropping it would leave the rest of the network with inputs it was never trained on."""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.fx as fx
import torch.nn as nn

from ..core import graph as G
from ..core.errors import ConfigError

_ADD_OPS = {"add", "add_"}


def _inside(node: fx.Node, path: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return any(v[0] == path or v[0].startswith(path + ".") for v in stack.values())


def _tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _is_residual(cap: G.Captured, path: str) -> bool:
    """Whether the block at ``path`` is one residual branch of the graph (see the module docstring)."""
    nodes = [n for n in cap.graph.nodes if n.op == "call_function" and _inside(n, path) and _tensor(n)]
    if not nodes:
        return False
    inside = set(nodes)
    # the block's activations in: not its weights, not symbolic sizes (batch * heads)
    acts = {a for n in nodes for a in n.all_input_nodes if a not in inside and _tensor(a)
            and a.op != "get_attr" and not (a.op == "placeholder" and a.name in cap.params)}
    outs = [n for n in nodes if any(u not in inside for u in n.users)]
    if len(outs) != 1:
        return False
    y = outs[0]
    shape = tuple(y.meta["val"].shape)
    for x in acts:  # the input the branch is added to; others (an attention mask) pass by the block unchanged
        if tuple(x.meta["val"].shape) != shape:
            continue
        if any(G.op_name(n) in _ADD_OPS and x in n.args for n in nodes):
            return True
        if any(G.op_name(u) in _ADD_OPS and x in u.args for u in y.users):
            return True
    return False


def _containers(model: nn.Module):
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Sequential, nn.ModuleList)) and len(mod) > 1:
            yield name, mod


def droppable_blocks(model: nn.Module, example) -> list[str]:
    """Names of the residual blocks of ``model`` that can be dropped (call order); [] when the model cannot be
    captured or has none."""
    try:
        cap = G.capture(model, tuple(example), what="dropping blocks")
    except ConfigError:
        return []
    out = []
    for cname, cont in _containers(cap.model):
        for key, child in cont.named_children():
            path = f"{cname}.{key}" if cname else key
            if any(True for _ in child.parameters()) and _is_residual(cap, path):
                out.append(path)
    return out


def drop_blocks(m: nn.Module, names: list[str]) -> list[dict]:
    """Remove the blocks ``names`` from ``m`` in place (at least one block stays in each container); the rows of
    the report's "Dropped blocks" table."""
    by_parent: dict[str, list[str]] = {}
    for n in names:
        parent, _, key = n.rpartition(".")
        try:
            cont = m.get_submodule(parent) if parent else m
        except AttributeError:
            cont = None
        if not isinstance(cont, (nn.Sequential, nn.ModuleList)) or key not in dict(cont.named_children()):
            raise ConfigError(f"drop: {n!r} is not a block of a Sequential/ModuleList in {type(m).__name__}")
        by_parent.setdefault(parent, []).append(key)
    rows = []
    for parent, keys in by_parent.items():
        cont = m.get_submodule(parent) if parent else m
        kept = [(k, c) for k, c in cont.named_children() if k not in keys]
        if not kept:
            raise ConfigError(f"drop: every block of {parent!r} was asked to go; keep at least one")
        params = {k: sum(p.numel() for p in c.parameters()) for k, c in cont.named_children()}
        new = (nn.Sequential(OrderedDict(kept)) if isinstance(cont, nn.Sequential)
               else nn.ModuleList([c for _, c in kept]))
        G.set_module(m, parent, new)
        owner_name = parent.rpartition(".")[0]
        owner = m.get_submodule(owner_name) if owner_name else m
        if isinstance(getattr(owner, "num_layers", None), int) and getattr(owner, "layers", None) is new:
            owner.num_layers = len(new)
        rows += [{"block": f"{parent}.{k}", "params": params[k], "blocks left": f"{len(kept)}/{len(params)}"}
                 for k in keys]
    return rows


def check_drops(model: nn.Module, example, names) -> None:
    """A one-line error for a name that is not a droppable block of ``model``."""
    ok = set(droppable_blocks(copy.deepcopy(model), example))
    bad = [n for n in names if n not in ok]
    if bad:
        raise ConfigError(f"drop: {', '.join(map(repr, bad))} is not a residual block that can be dropped "
                          f"(droppable: {', '.join(sorted(ok)) or 'none'})")
