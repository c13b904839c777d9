"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019).

For two layers joined by a positively homogeneous activation (ReLU; max-pool
on the way is fine), channel i of the first layer is scaled by 1/s_i and the
matching input channel of the second by s_i, with s_i = sqrt(r1_i / r2_i)
(r = per-channel weight range). The float function is unchanged, but the
per-channel ranges even out, which matters most for depthwise convolutions
whose channels differ by orders of magnitude.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from ..core import graph as G


def _next_layer(gm, node: fx.Node):
    """Follow node -> ReLU -> (max-pool)* -> Conv/Linear, each with one user."""
    users = list(node.users)
    if len(users) != 1 or not G.is_relu(gm, users[0]):
        return None
    cur = users[0]
    while True:
        users = list(cur.users)
        if len(users) != 1:
            return None
        nxt = users[0]
        mod = G.module_of(gm, nxt)
        if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
            cur = nxt
            continue
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            return nxt
        return None


@torch.no_grad()
def cross_layer_equalize(gm: fx.GraphModule, iterations: int = 2) -> list[tuple[str, str]]:
    pairs = []
    for node in gm.graph.nodes:
        a = G.module_of(gm, node)
        if not isinstance(a, (nn.Conv1d, nn.Conv2d)):
            continue
        if a.groups != 1 and not (a.groups == a.in_channels == a.out_channels):
            continue
        nxt = _next_layer(gm, node)
        if nxt is None:
            continue
        b = G.module_of(gm, nxt)
        depthwise = b.groups == b.in_channels == b.out_channels
        if b.groups != 1 and not depthwise:
            continue
        if b.in_channels != a.out_channels:
            continue
        pairs.append((node.target, nxt.target))
    for _ in range(iterations):
        for na, nb in pairs:
            a, b = gm.get_submodule(na), gm.get_submodule(nb)
            r1 = a.weight.abs().flatten(1).amax(1)
            if b.groups == 1:
                r2 = b.weight.abs().transpose(0, 1).flatten(1).amax(1)
            else:
                r2 = b.weight.abs().flatten(1).amax(1)
            s = torch.sqrt(r1 / r2.clamp(min=1e-12)).clamp(min=1e-4, max=1e4)
            shape_a = [-1] + [1] * (a.weight.ndim - 1)
            a.weight.div_(s.reshape(shape_a))
            if a.bias is not None:
                a.bias.div_(s)
            if b.groups == 1:
                b.weight.mul_(s.reshape([1, -1] + [1] * (b.weight.ndim - 2)))
            else:
                b.weight.mul_(s.reshape(shape_a))
    return pairs
