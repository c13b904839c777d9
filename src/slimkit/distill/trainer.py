"""The recovery trainer: fine-tune a compressed model with labels (``plain``)
or against the original model (``kd``); embedding models always learn from
the teacher's embeddings. Deterministic given the seed."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.context import Context, seed_everything
from ..core.errors import ConfigError
from ..core.progress import track
from ..zoo.train import augment_batch
from .losses import embedding_loss, kd_loss


def recover(model: nn.Module, ctx: Context, ft, on_step=None, extra_loss=None) -> nn.Module:
    """Fine-tune ``model`` in place per ``ft`` (a pipeline Finetune config).

    ``on_step(step, total_steps)`` runs after every optimizer step (pruning
    schedules use it to update and re-apply their masks); ``extra_loss()`` is
    added to every step's loss (sparsity penalties use it)."""
    data = ctx.data
    if data is None or data.train is None:
        raise ConfigError("fine-tuning needs training data; pass --data with a train split")
    teacher = ctx.teacher
    embedding = data.task == "embedding"
    if (ft.method == "kd" or embedding) and teacher is None:
        raise ConfigError("distillation needs a teacher model in the context")
    if not embedding and data.train.targets is None:
        raise ConfigError(f"plain fine-tuning needs labels; {data.name} has none (use method: kd)")
    seed_everything(ctx.seed)
    g = torch.Generator().manual_seed(ctx.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=ft.lr, weight_decay=0.0)
    n = len(data.train)
    steps = max(1, ft.epochs * -(-n // ft.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    if teacher is not None:
        teacher.eval()
    model.train()
    aug = data.augment if ft.augment == "auto" else (None if ft.augment == "none" else ft.augment)
    step = 0
    for _ in track(range(ft.epochs), f"fine-tune ({ft.method})"):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, ft.batch_size):
            idx = perm[i:i + ft.batch_size]
            x = tuple(t[idx] for t in data.train.inputs)
            if aug:  # the teacher sees the same augmented batch
                x = (augment_batch(x[0], aug, g),) + x[1:]
            y = None if data.train.targets is None else data.train.targets[idx]
            out = model(*x)
            if embedding or ft.method == "kd":
                with torch.no_grad():
                    t_out = teacher(*x)
                loss = embedding_loss(out, t_out) if embedding else kd_loss(out, t_out, y, temperature=ft.temperature,
                                                                            alpha=ft.alpha)
            else:
                loss = F.cross_entropy(out, y)
            if extra_loss is not None:
                loss = loss + extra_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if on_step is not None:
                on_step(step, steps)
    model.eval()
    return model
