"""A small deterministic supervised trainer used to build the zoo models
(and as the plain fine-tuning loop of recipes)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.context import seed_everything
from ..core.progress import track
from ..core.data import augment_batch, predict  # noqa: F401 - predict: used by the zoo's tests and users
from .data import DataSplit


@dataclasses.dataclass
class TrainSpec:
    epochs: int = 30
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    label_smoothing: float = 0.0
    augment: Optional[str] = None  # "shift2d" | "shift1d" | None


def fit_classifier(model: nn.Module, train: DataSplit, spec: TrainSpec, *, seed: int = 0, desc: str = "training",
                   loss_fn: Optional[Callable] = None) -> nn.Module:
    """Train ``model`` in place with AdamW + cosine schedule; deterministic given ``seed``."""
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = -(-len(train) // spec.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch)
    model.train()
    for _ in track(range(spec.epochs), desc):
        perm = torch.randperm(len(train), generator=g)
        for i in range(0, len(train), spec.batch_size):
            idx = perm[i:i + spec.batch_size]
            x = tuple(t[idx] for t in train.inputs)
            y = train.targets[idx]
            x = (augment_batch(x[0], spec.augment, g),) + x[1:]
            out = model(*x)
            loss = loss_fn(out, y, x) if loss_fn else F.cross_entropy(out, y, label_smoothing=spec.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model
