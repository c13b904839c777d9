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
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as fc:
        out = model(*example)
    del out
    model.train(was_training)
    return int(fc.get_total_flops() // 2)
