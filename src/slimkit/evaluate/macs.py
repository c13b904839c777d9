"""Parameters and multiply-accumulates, counted by torch's own FLOP counter
(``torch.utils.flop_counter``), not by hand-written per-layer formulas."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


def count_params(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def count_nonzero_params(model: nn.Module) -> int:
    return int(sum(int((p != 0).sum()) for p in model.parameters()))


@torch.enable_grad()  # grad mode keeps nn.MultiheadAttention off its fused fast path, which the counter misses
def count_macs(model: nn.Module, example: Sequence[torch.Tensor]) -> int:
    """MACs for one forward pass of ``example`` (pass a batch of 1 for per-sample MACs).

    torch's FlopCounterMode counts 2 FLOPs per multiply-accumulate of matmul,
    convolution and attention ops; elementwise ops are not counted.
    """
    total, _ = _count(model, example)
    return total


def macs_by_layer(model: nn.Module, example: Sequence[torch.Tensor]) -> dict[str, int]:
    """MACs per leaf layer (module name -> MACs) for one forward pass of ``example``; layers with none are left out."""
    _, per = _count(model, example)
    return per


@torch.enable_grad()
def _count(model: nn.Module, example: Sequence[torch.Tensor]) -> tuple[int, dict[str, int]]:
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    rnn: dict = {}
    hooks = [m.register_forward_hook(_rnn_hook(rnn, name)) for name, m in model.named_modules()
             if isinstance(m, nn.RNNBase)]
    try:
        with FlopCounterMode(display=False) as fc:
            out = model(*example)
    finally:
        for h in hooks:
            h.remove()
    del out
    model.train(was_training)
    counted = fc.get_flop_counts()
    # torch's counter does not see inside the fused RNN kernels: add their gate matmuls (unless it ever does)
    root = type(model).__name__
    extra = sum(m for name, m in rnn.items() if not sum(counted.get(f"{root}.{name}" if name else root, {}).values()))
    per = {}
    for name, mod in model.named_modules():
        if name and not any(True for _ in mod.children()):
            macs = sum(counted.get(f"{root}.{name}", {}).values()) // 2 or rnn.get(name, 0)
            if macs:
                per[name] = int(macs)
    return int(fc.get_total_flops() // 2 + extra), per


_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _rnn_hook(store: dict, name: str):
    """MACs of an nn.LSTM / nn.GRU / nn.RNN call: per step, layer and direction, gates x hidden x (input + hidden)
    (+ the LSTM projection)."""
    def fn(mod: nn.RNNBase, args, out) -> None:
        x = args[0]
        if not isinstance(x, torch.Tensor):  # a PackedSequence: every real step once
            steps_x_batch = int(x.data.shape[0])
        else:
            steps_x_batch = int(x.shape[0] * x.shape[1]) if x.dim() == 3 else int(x.shape[0])
        h = mod.hidden_size
        hr = mod.proj_size or h
        dirs = 2 if mod.bidirectional else 1
        total = 0
        for layer in range(mod.num_layers):
            inp = mod.input_size if layer == 0 else hr * dirs
            per = _GATES.get(mod.mode, 1) * h * (inp + hr) + (h * hr if mod.proj_size else 0)
            total += per * dirs
        store[name] = store.get(name, 0) + total * steps_x_batch
    return fn
