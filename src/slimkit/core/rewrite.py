"""Drop-in rewrites that expose layers a technique could not otherwise reach.

``nn.MultiheadAttention`` keeps its query/key/value projections in one packed ``in_proj_weight`` and reads its
``out_proj`` weight directly inside ``F.multi_head_attention_forward``: no ``nn.Linear`` of it is ever called, so
layer-wise techniques (static quantization, low-rank factorization, head pruning) cannot see its four matrices.
``SplitAttention`` holds the same parameters as four ``nn.Linear`` layers and computes the same function with
``scaled_dot_product_attention``; ``split_attention`` swaps it in for every ``nn.MultiheadAttention`` of a model
(``nn.TransformerEncoderLayer`` then takes its regular, non-fused path).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class SplitAttention(nn.Module):
    """``nn.MultiheadAttention`` with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linear layers."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        e, kd, vd = mha.embed_dim, mha.kdim, mha.vdim
        self.embed_dim, self.num_heads, self.batch_first = e, mha.num_heads, mha.batch_first
        self.head_dim = e // mha.num_heads
        self.dropout = mha.dropout
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("add_bias_kv / add_zero_attn attention is not supported")
        bias = mha.in_proj_bias is not None
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(e, e, bias), nn.Linear(kd, e, bias), nn.Linear(vd, e, bias)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                q, k, v = mha.in_proj_weight.chunk(3)
            else:
                q, k, v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            for lin, w in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v)):
                lin.weight.copy_(w)
            if bias:
                for lin, b in zip((self.q_proj, self.k_proj, self.v_proj), mha.in_proj_bias.chunk(3)):
                    lin.bias.copy_(b)
        out = nn.Linear(e, e, mha.out_proj.bias is not None)
        out.load_state_dict(mha.out_proj.state_dict())
        self.out_proj = out
        self.train(mha.training)

    # read by nn.TransformerEncoder(Layer) to decide on its fused fast path: "not packed" keeps the regular path
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def forward(self, query, key, value, key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True, is_causal: bool = False):
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or not batched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, lq, _ = query.shape
        ls = key.shape[1]
        h, d = self.num_heads, self.head_dim

        def heads(t, n):
            return t.reshape(b, n, h, -1).transpose(1, 2)

        q, k, v = heads(self.q_proj(query), lq), heads(self.k_proj(key), ls), heads(self.v_proj(value), ls)
        mask = _additive_mask(attn_mask, key_padding_mask, b, h, lq, ls, q.dtype)
        if is_causal and mask is None:
            mask = torch.triu(torch.full((lq, ls), float("-inf"), dtype=q.dtype, device=q.device), 1)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            att = q @ k.transpose(-2, -1) / math.sqrt(d)
            if mask is not None:
                att = att + mask
            att = F.dropout(att.softmax(-1), p, self.training)
            o = att @ v
            weights = att.mean(1) if average_attn_weights else att
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        o = self.out_proj(o.transpose(1, 2).reshape(b, lq, h * d))
        if not self.batch_first or not batched:
            o = o.transpose(0, 1)
        if not batched:
            o = o.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        return o, weights


def _additive_mask(attn_mask, key_padding_mask, b, h, lq, ls, dtype):
    mask = None
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        mask = m.to(dtype).reshape(b, h, lq, ls) if m.dim() == 3 else m.to(dtype)
    if key_padding_mask is not None:
        kp = key_padding_mask
        if kp.dtype == torch.bool:
            kp = torch.zeros(kp.shape, dtype=dtype, device=kp.device).masked_fill(kp, float("-inf"))
        kp = kp.to(dtype).reshape(b, 1, 1, ls)
        mask = kp if mask is None else mask + kp
    return mask


def split_attention(model: nn.Module) -> list[str]:
    """Replace every ``nn.MultiheadAttention`` of ``model`` (in place) by an equivalent ``SplitAttention``;
    returns the names replaced. Call it on a copy: the user's model is never changed."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for n in names:
        parent, _, attr = n.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, SplitAttention(model.get_submodule(n)))
    return names
