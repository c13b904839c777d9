"""Importance criteria: one callable each, returning a score per weight
(``per="weight"``) or per output channel (``per="channel"``). Higher = keep."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn


def _reduce(score: torch.Tensor, per: str) -> torch.Tensor:
    return score if per == "weight" else score.flatten(1).sum(1)


def magnitude(layer: nn.Module, per: str = "weight", p: int = 1, **_) -> torch.Tensor:
    """|w| (L1) or w^2 (L2), summed per output channel when per='channel'."""
    w = layer.weight.detach()
    return _reduce(w.abs() if p == 1 else w.pow(2), per)


def taylor(layer: nn.Module, per: str = "weight", grad: Optional[torch.Tensor] = None, **_) -> torch.Tensor:
    """First-order Taylor: |grad * w| (Molchanov et al., 2019); pass the accumulated gradient."""
    if grad is None:
        grad = layer.weight.grad
    if grad is None:
        raise ValueError("taylor importance needs gradients: run a few batches with loss.backward() first")
    return _reduce((grad.detach() * layer.weight.detach()).abs(), per)


def bn_scale(layer: nn.Module, per: str = "channel", bn: Optional[nn.Module] = None, **_) -> torch.Tensor:
    """|gamma| of the BatchNorm that follows the layer (Liu et al., network slimming)."""
    if bn is None:
        raise ValueError("bn_scale importance needs the BatchNorm that follows the layer")
    if per != "channel":
        raise ValueError("bn_scale scores channels, not single weights")
    return bn.weight.detach().abs()


def random(layer: nn.Module, per: str = "weight", seed: int = 0, **_) -> torch.Tensor:
    """A baseline for tests and ablations."""
    g = torch.Generator().manual_seed(seed)
    return _reduce(torch.rand(layer.weight.shape, generator=g), per)


CRITERIA: dict[str, Callable] = {"magnitude": magnitude, "l1": magnitude,
                                 "l2": lambda layer, per="weight", **k: magnitude(layer, per, p=2),
                                 "taylor": taylor, "bn_scale": bn_scale, "random": random}


@torch.enable_grad()
def accumulate_gradients(model: nn.Module, data, batches: int = 4, batch_size: int = 64) -> None:
    """Fill .grad with the summed loss gradient over a few training batches (for Taylor importance)."""
    import torch.nn.functional as F

    model.zero_grad(set_to_none=True)
    model.eval()
    for i, (x, y) in enumerate(data.train.batches(batch_size)):
        if i >= batches:
            break
        F.cross_entropy(model(*x), y).backward()
