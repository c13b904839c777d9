"""Distillation as techniques: ``distill.train`` fine-tunes the given model
against the teacher; ``distill.student`` first builds a smaller student from
the teacher itself (channels thinned by the structured-pruning analysis, and/or
transformer layers dropped), initialised from the teacher's weights or at
random, then trains it with KD (or alone, as the no-teacher baseline)."""
from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import torch
import torch.nn as nn

from ..core.config import Config, check_choice, check_range
from ..core.context import Context, seed_everything
from ..core.errors import ConfigError
from ..core.registry import register_technique
from ..evaluate.macs import count_params
from ..distill.finetune import Finetune
from .trainer import recover


@dataclasses.dataclass
class DistillConfig(Finetune):
    """Train the model against the teacher (all of ``finetune``'s options)."""

    TUNABLE: ClassVar = None  # the planner trains through each stage's finetune instead
    method: str = "kd"
    epochs: int = 10


@register_technique("distill.train", DistillConfig, needs=("train_data", "teacher"),
                    summary="knowledge distillation: logits (T^2-scaled KL + labels), hints, or embeddings")
def distill_train(model: nn.Module, cfg: DistillConfig, ctx: Context) -> nn.Module:
    m = copy.deepcopy(model)
    return recover(m, ctx, cfg, checkpoint=ctx.checkpoint)


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's repeated block list (``encoder.layer``, ``layers``, ``h``, ``blocks``)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) >= 2 and name.split(".")[-1] in ("layer", "layers", "h",
                                                                                           "blocks", "block"):
            if len({type(b) for b in mod}) == 1:
                return name, mod
    raise ConfigError("keep_layers needs a model with a stack of identical blocks (e.g. encoder.layer); none found")


def drop_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """Keep only the blocks at ``keep`` (in place); updates a Hugging Face config's layer count."""
    name, stack = layer_stack(model)
    if not keep or any(not 0 <= i < len(stack) for i in keep) or len(set(keep)) != len(keep):
        raise ConfigError(f"keep_layers={keep} must list distinct indices in 0..{len(stack) - 1}")
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.ModuleList([stack[i] for i in sorted(keep)]))
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        if cfg is not None and hasattr(cfg, "num_hidden_layers"):
            cfg.num_hidden_layers = len(keep)
        if cfg is not None and getattr(cfg, "layer_types", None):
            cfg.layer_types = [cfg.layer_types[i] for i in sorted(keep)]
    for i, block in enumerate(model.get_submodule(name)):  # attention layers that carry their index
        for sub in block.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = i
    return model


@dataclasses.dataclass
class StudentConfig(Config):
    """A smaller student made from the teacher, then trained."""

    width: float = 0.5  # share of channels kept in every prunable group (1.0 = same width)
    keep_layers: list = dataclasses.field(default_factory=list)  # transformer blocks to keep, e.g. [0, 5]
    init: str = "teacher"  # teacher (inherit the kept weights) | random (train from scratch)
    method: str = "kd"  # kd | plain (trained alone: the baseline KD must beat)
    epochs: int = 20
    lr: float = 2e-3
    batch_size: int = 64
    temperature: float = 4.0
    # weight of the hard labels: a student trained from scratch learns most from the teacher (3 seeds, half-width zoo
    # CNNs, 60 epochs: alpha 0.1 gave digits 99.63 and MNIST-1D 97.27 vs 99.07 / 97.60 at 0.5; docs/BENCHMARKS.md)
    alpha: float = 0.1
    augment: str = "none"
    mixup: float = 0.0
    patience: int = 0

    def validate(self) -> None:
        check_range("width", self.width, 0, 1, lo_open=True)
        check_choice("init", self.init, ("teacher", "random"))
        check_choice("method", self.method, ("kd", "plain"))
        if self.epochs < 1:
            raise ConfigError("epochs must be >= 1")
        Finetune(method=self.method, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                 temperature=self.temperature, alpha=self.alpha, augment=self.augment, patience=self.patience,
                 mixup=self.mixup)


def make_student(teacher: nn.Module, cfg: StudentConfig, ctx: Context) -> nn.Module:
    s = copy.deepcopy(teacher)
    if cfg.keep_layers:
        drop_layers(s, list(cfg.keep_layers))
    if cfg.width < 1:
        from ..prune.structured import StructuredPruneConfig, structured_prune

        s = structured_prune(s, StructuredPruneConfig(ratio=1 - cfg.width, round_to=1, max_ratio=0.99),
                             Context(data=ctx.data, seed=ctx.seed))
    if cfg.init == "random":  # BatchNorm's reset_parameters also resets its running statistics
        seed_everything(ctx.seed)
        for mod in s.modules():
            if hasattr(mod, "reset_parameters") and mod is not s:
                mod.reset_parameters()
    return s


@register_technique("distill.student", StudentConfig, needs=("train_data",),
                    summary="a thinner / shallower student built from the teacher, trained with KD (or alone)")
def distill_student(model: nn.Module, cfg: StudentConfig, ctx: Context) -> nn.Module:
    if cfg.method == "kd" and ctx.teacher is None:
        raise ConfigError("distill.student with method kd needs a teacher")
    with torch.no_grad():
        s = make_student(model, cfg, ctx)
    ft = Finetune(method=cfg.method, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                  temperature=cfg.temperature, alpha=cfg.alpha, augment=cfg.augment, patience=cfg.patience,
                  mixup=cfg.mixup)
    recover(s, ctx, ft, checkpoint=ctx.checkpoint)
    ctx.note(f"student: {count_params(s):,} params vs the teacher's {count_params(model):,} (width {cfg.width}"
             + (f", blocks {list(cfg.keep_layers)}" if cfg.keep_layers else "") + f", {cfg.init} init, "
             f"{cfg.method}, {cfg.epochs} epochs)")
    return s
