"""Structured pruning inside the blocks of transformer and recurrent models, found on the torch.export capture
(``core.graph.Captured``) where torch.fx cannot trace the model or sees no prunable channel group in it.

Three kinds of unit, each removable without changing what the block looks like from outside:

- **attention heads**: rows of the query/key/value projections (one ``head_dim`` slice per head) and the
  matching columns of the output projection. Attention modules are recognised by what they hold (a table, as in
  Torch-Pruning's per-layer-type pruners, so a new family is one entry): ``q_proj``/``k_proj``/``v_proj``/``o_proj``
  with ``head_dim`` (slimkit's ``SplitAttention``: every ``nn.MultiheadAttention`` is split first; HF ViT, Llama
  style), BERT-style (``query``/``key``/``value`` with the output ``dense`` in the sibling ``output``) and
  DistilBERT-style (``q_lin``/``k_lin``/``v_lin``/``out_lin``).
  Their head count attributes are updated; the forward infers heads from the shape, so the model runs and exports.
- **feed-forward width**: a Linear whose output reaches exactly one other Linear through element-wise ops only
  (activation, dropout): ``nn.TransformerEncoderLayer``'s linear1/linear2, BERT/ViT intermediate/output, any MLP.
  Found on the ATen graph, not by name.
- **recurrent hidden units**: a unidirectional ``nn.GRU``/``nn.LSTM`` whose output reaches one Linear through
  indexing only (``seq[:, -1]``): each layer's gate rows and recurrent columns, the next layer's input columns,
  the consumer's columns. The module is rebuilt with the smaller ``hidden_size``.

Importance is the L2 norm of each unit's weights (``importance.magnitude``), the same criterion as channels.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn

from ..core import graph as G
from .importance import magnitude
from .program_heads import program_heads

_ELEMENTWISE = {"gelu", "relu", "relu_", "silu", "silu_", "tanh", "sigmoid", "hardtanh", "hardtanh_", "dropout",
                "clone", "hardswish", "leaky_relu", "elu", "mish"}
_INDEXING = {"getitem", "select", "slice", "squeeze", "contiguous", "clone"}


@dataclasses.dataclass
class Unit:
    """One prunable set of units: ``size`` of them, scored by ``score()``, removed by ``apply(keep)``."""

    kind: str  # heads | ffn | rnn
    name: str
    size: int
    score: Callable[[nn.Module], torch.Tensor]  # score(model): one value per unit
    apply: Callable[[nn.Module, torch.Tensor], None]  # apply(model, keep): in place, by module names
    projections: Optional[tuple] = None  # attention: its q/k/v/out Linear names


def _l2_rows(lin: nn.Linear) -> torch.Tensor:
    return magnitude(lin, per="channel", p=2)


def _l2_cols(lin: nn.Linear) -> torch.Tensor:
    return lin.weight.detach().pow(2).sum(0)


def _slice(lin: nn.Linear, idx: torch.Tensor, dim: int) -> None:
    """Keep ``idx`` of a Linear's outputs (dim 0) or inputs (dim 1), in place."""
    with torch.no_grad():
        lin.weight = nn.Parameter(lin.weight.detach().index_select(dim, idx).clone())
        if dim == 0:
            if lin.bias is not None:
                lin.bias = nn.Parameter(lin.bias.detach()[idx].clone())
            lin.out_features = len(idx)
        else:
            lin.in_features = len(idx)


# -- attention heads: the table of known attention modules ---------------------------------------------------

def _proj_style(name, mod, model):
    """q_proj/k_proj/v_proj + o_proj or out_proj and ``head_dim``: slimkit's SplitAttention, HF ViT (v5), Llama-style."""
    q, k, v = (getattr(mod, a, None) for a in ("q_proj", "k_proj", "v_proj"))
    o_name = "o_proj" if isinstance(getattr(mod, "o_proj", None), nn.Linear) else "out_proj"
    o = getattr(mod, o_name, None)
    if not all(isinstance(x, nn.Linear) for x in (q, k, v, o)) or not isinstance(getattr(mod, "head_dim", None), int):
        return None
    if not (q.out_features == k.out_features == v.out_features == o.in_features):
        return None  # grouped-query attention: heads of k/v are shared, not removable one for one
    return (tuple(f"{name}.{a}" for a in ("q_proj", "k_proj", "v_proj", o_name)), mod.head_dim,
            ("num_heads", "num_attention_heads"))


def _hf_bert_like(name, mod, model):
    q, k, v = (getattr(mod, a, None) for a in ("query", "key", "value"))
    if not all(isinstance(x, nn.Linear) for x in (q, k, v)) or not hasattr(mod, "attention_head_size"):
        return None
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    out = getattr(getattr(parent, "output", None), "dense", None)
    if not isinstance(out, nn.Linear) or out.in_features != q.out_features:
        return None
    pre = f"{parent_name}." if parent_name else ""
    return ((f"{name}.query", f"{name}.key", f"{name}.value", f"{pre}output.dense"), mod.attention_head_size,
            ("num_attention_heads",))


def _distilbert_like(name, mod, model):
    q, k, v, o = (getattr(mod, a, None) for a in ("q_lin", "k_lin", "v_lin", "out_lin"))
    if not all(isinstance(x, nn.Linear) for x in (q, k, v, o)) or not hasattr(mod, "attention_head_size"):
        return None
    return tuple(f"{name}.{a}" for a in ("q_lin", "k_lin", "v_lin", "out_lin")), mod.attention_head_size, ("n_heads",)


ATTENTION_TABLE = [_proj_style, _hf_bert_like, _distilbert_like]


def attention_units(model: nn.Module) -> list[Unit]:
    units = []
    for name, mod in model.named_modules():
        for recognise in ATTENTION_TABLE:
            found = recognise(name, mod, model)
            if found:
                units.append(_head_unit(model, name, *found))
                units[-1].projections = found[0]
                break
    return units


def _head_unit(model, name, projections, d, count_attrs) -> Unit:
    h = model.get_submodule(projections[0]).out_features // d

    def score(model) -> torch.Tensor:
        q, k, v, o = (model.get_submodule(n) for n in projections)
        s = sum(_l2_rows(x).reshape(h, d).sum(1) for x in (q, k, v))
        return s + _l2_cols(o).reshape(h, d).sum(1)

    def apply(model, keep: torch.Tensor) -> None:
        q, k, v, o = (model.get_submodule(n) for n in projections)
        rows = (keep[:, None] * d + torch.arange(d)[None]).reshape(-1)
        for x in (q, k, v):
            _slice(x, rows, 0)
        _slice(o, rows, 1)
        att = model.get_submodule(name)
        for a in count_attrs:
            if hasattr(att, a):
                setattr(att, a, len(keep))
        if hasattr(att, "all_head_size"):
            att.all_head_size = len(keep) * d

    return Unit("heads", name, h, score, apply)


# -- feed-forward width and recurrent units: found on the captured graph ------------------------------------------

def _single_user(node: fx.Node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def ffn_units(model: nn.Module, cap: G.Captured, exclude: set) -> list[Unit]:
    units = []
    for node in cap.graph.nodes:
        if node.op != "call_function" or G.op_name(node) != "linear":
            continue
        a = cap.owner(node)
        if not a or a in exclude or cap.calls[a].calls != 1:
            continue
        cur = node
        while True:
            nxt = _single_user(cur)
            if nxt is None or nxt.op != "call_function":
                break
            op = G.op_name(nxt)
            if op == "linear" and nxt.args[0] is cur:
                b = cap.owner(nxt)
                if b and b != a and b not in exclude and cap.calls[b].calls == 1:
                    units.append(_ffn_unit(model, a, b))
                break
            if op not in _ELEMENTWISE or nxt.args[0] is not cur:
                break
            cur = nxt
    return units


def _ffn_unit(model, a_name, b_name) -> Unit:
    def score(m):
        return _l2_rows(m.get_submodule(a_name)) + _l2_cols(m.get_submodule(b_name))

    def apply(m, keep):
        _slice(m.get_submodule(a_name), keep, 0)
        _slice(m.get_submodule(b_name), keep, 1)

    return Unit("ffn", f"{a_name}->{b_name}", model.get_submodule(a_name).out_features, score, apply)


def rnn_units(model: nn.Module, cap: G.Captured) -> tuple[list[Unit], dict]:
    """Units of each GRU/LSTM whose sequence output reaches one Linear through indexing only; the reasons for
    the others."""
    units, skipped = [], {}
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.GRU, nn.LSTM)):
            continue
        if mod.bidirectional or getattr(mod, "proj_size", 0):
            skipped[name] = "bidirectional or projected recurrent layer"
            continue
        consumer = _rnn_consumer(cap, name)
        if consumer is None:
            skipped[name] = "its output does not reach exactly one Linear through indexing only"
            continue
        units.append(_rnn_unit(model, name, consumer))
    return units, skipped


def _rnn_consumer(cap: G.Captured, name: str):
    nodes = [n for n in cap.graph.nodes if n.op == "call_function" and cap.owner(n) == name
             and G.op_name(n) in ("gru", "lstm")]
    if len(nodes) != 1:
        return None
    outs = [u for u in nodes[0].users if G.op_name(u) == "getitem"]
    seq = [u for u in outs if u.args[1] == 0]
    if len(seq) != 1 or any(u.users for u in outs if u.args[1] != 0):
        return None  # the final hidden state is used too: its width would change under the user's code
    cur = seq[0]
    while True:
        nxt = _single_user(cur)
        if nxt is None or nxt.op != "call_function":
            return None
        op = G.op_name(nxt)
        if op == "linear" and nxt.args[0] is cur:
            return cap.owner(nxt) or None
        if op not in _INDEXING or nxt.args[0] is not cur:
            return None
        cur = nxt


def _rnn_unit(model, name, consumer) -> Unit:
    rnn0 = model.get_submodule(name)
    gates = 3 if isinstance(rnn0, nn.GRU) else 4
    hsz, layers = rnn0.hidden_size, rnn0.num_layers

    def score(model):
        rnn = model.get_submodule(name)
        s = torch.zeros(hsz)
        for layer in range(layers):
            for p in ("weight_ih", "weight_hh"):
                w = getattr(rnn, f"{p}_l{layer}").detach()
                s += w.reshape(gates, hsz, -1).pow(2).sum((0, 2))
            s += getattr(rnn, f"weight_hh_l{layer}").detach().pow(2).sum(0)
        return s + _l2_cols(model.get_submodule(consumer))

    def apply(model, keep):
        rnn = model.get_submodule(name)
        rows = (torch.arange(gates)[:, None] * hsz + keep[None]).reshape(-1)
        new = type(rnn)(rnn.input_size, len(keep), num_layers=layers, bias=rnn.bias, batch_first=rnn.batch_first,
                        dropout=rnn.dropout)
        with torch.no_grad():
            for layer in range(layers):
                w_ih = getattr(rnn, f"weight_ih_l{layer}")[rows]
                if layer > 0:
                    w_ih = w_ih[:, keep]
                getattr(new, f"weight_ih_l{layer}").copy_(w_ih)
                getattr(new, f"weight_hh_l{layer}").copy_(getattr(rnn, f"weight_hh_l{layer}")[rows][:, keep])
                if rnn.bias:
                    for p in ("bias_ih", "bias_hh"):
                        getattr(new, f"{p}_l{layer}").copy_(getattr(rnn, f"{p}_l{layer}")[rows])
        new.train(rnn.training)
        G.set_module(model, name, new)
        _slice(model.get_submodule(consumer), keep, 1)

    return Unit("rnn", f"{name}->{consumer}", hsz, score, apply)


def find_units(model: nn.Module, example, program=None) -> tuple[list[Unit], dict]:
    """Every prunable unit set of ``model`` (in place: call it on a copy whose ``nn.MultiheadAttention`` layers
    have been split) and the reasons for layers left alone. ``program``: ``program_heads(model, example)`` when the
    caller has it already."""
    heads = attention_units(model)
    found, skipped = program or program_heads(model, example)  # attention inside a loaded .pt2 program
    heads += [Unit("heads", u.name, u.h, u.score, u.apply, u.projections) for u in found]
    cap = G.capture(model, example, what="structured pruning")
    ffn = ffn_units(model, cap, {n for u in heads for n in u.projections})
    rnn, why = rnn_units(model, cap)
    return heads + ffn + rnn, {**skipped, **why}
