"""Gradual pruning during training: sparsity follows the AGP cubic schedule,
masks are recomputed every few steps from the current weights; the optional
dynamic mode (RigL-style, Evci et al. 2020) also regrows the pruned weights
with the largest gradients, keeping the sparsity."""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn

from ..core.config import Config, check_choice, check_range
from ..core.context import Context
from ..core.errors import ConfigError
from ..core.registry import register_technique
from ..core.targets import Targets
from ..core.rewrite import split_attention
from .schedule import agp
from .unstructured import PRUNABLE_TYPES, packed_parts, rank_masks, weight_tensors


@dataclasses.dataclass
class GradualPruneConfig(Config):
    final_sparsity: float = 0.9
    initial_sparsity: float = 0.0
    epochs: int = 10
    prune_fraction_of_training: float = 0.5  # schedule ends here, the rest only recovers
    update_every: int = 20  # optimizer steps between mask updates
    scope: str = "global"
    regrow_fraction: float = 0.0  # > 0: dynamic mode, share of kept weights swapped each update
    method: str = "kd"
    lr: float = 1e-3
    augment: str = "none"  # as in finetune: none | auto | shift2d | shift1d
    targets: Targets = dataclasses.field(default_factory=lambda: Targets(types=list(PRUNABLE_TYPES)))

    def validate(self) -> None:
        check_range("final_sparsity", self.final_sparsity, 0, 1, hi_open=True)
        check_choice("augment", self.augment, ("auto", "none", "shift2d", "shift1d"))
        check_range("initial_sparsity", self.initial_sparsity, 0, self.final_sparsity)
        check_range("prune_fraction_of_training", self.prune_fraction_of_training, 0, 1, lo_open=True)
        check_range("regrow_fraction", self.regrow_fraction, 0, 0.5)
        check_choice("scope", self.scope, ("global", "layer", "lamp"))
        check_choice("method", self.method, ("kd", "plain"))
        if self.epochs < 1 or self.update_every < 1:
            raise ConfigError("epochs and update_every must be >= 1")
        if isinstance(self.targets, (dict, list, str)):
            self.targets = Targets.from_dict(self.targets)


class _Weights:
    """The weight tensors a gradual/iterative pruning masks, as (name, module, parameter name), with what their
    masks are ranked by: a program's packed q|k|v projection counts as its parts under LAMP (as one-shot)."""

    def __init__(self, model: nn.Module, cfg, ctx: Context):
        split_attention(model)  # MultiheadAttention's packed in_proj as Linear calls: their masks apply
        self.items = weight_tensors(model, cfg.targets)
        self.parts = packed_parts(model, cfg.scope, ctx.example_inputs)
        self.scope = cfg.scope

    def ones(self) -> dict:
        return {n: torch.ones_like(getattr(mod, p)) for n, mod, p in self.items}

    def masks(self, sparsity: float) -> dict:
        return rank_masks({n: getattr(mod, p).detach().abs() for n, mod, p in self.items}, sparsity, self.scope,
                          parts=self.parts)

    @torch.no_grad()
    def apply(self, masks: dict) -> None:
        for n, mod, p in self.items:
            getattr(mod, p).mul_(masks[n])

    def zeros(self) -> tuple[int, int]:
        total = sum(getattr(mod, p).numel() for _, mod, p in self.items)
        return sum(int((getattr(mod, p) == 0).sum()) for _, mod, p in self.items), total


def _setup(model: nn.Module, cfg, ctx: Context, name: str):
    """A copy of the model to train and its targeted weights."""
    if cfg.method == "kd" and ctx.teacher is None:
        raise ConfigError(f"{name} with method kd needs a teacher")
    m = copy.deepcopy(model)
    return m, _Weights(m, cfg, ctx)


@register_technique("prune.gradual", GradualPruneConfig, needs=("train_data",),
                    summary="gradual (AGP) pruning during KD training; optional dynamic prune-and-regrow")
def gradual_prune(model: nn.Module, cfg: GradualPruneConfig, ctx: Context) -> nn.Module:
    """Prune while training: AGP schedule, masks re-applied after every step."""
    from ..distill.trainer import recover
    from ..distill.finetune import Finetune

    m, w = _setup(model, cfg, ctx, "prune.gradual")
    state = {"masks": w.ones(), "sparsity": 0.0, "regrown": 0}

    def on_step(step: int, total: int) -> None:
        end = max(1, int(total * cfg.prune_fraction_of_training))
        if step % cfg.update_every == 0 or step == end:
            s = agp(step, final=cfg.final_sparsity, initial=cfg.initial_sparsity, start=0, end=end)
            masks = w.masks(s)
            if cfg.regrow_fraction > 0 and step < end:
                for n, mod, p in w.items:
                    t = getattr(mod, p)
                    if t.grad is None:
                        continue
                    mk = masks[n].reshape(-1)
                    pruned = (mk == 0).nonzero().reshape(-1)
                    k = min(int(cfg.regrow_fraction * int(mk.sum())), pruned.numel())
                    if k == 0:
                        continue
                    grow = pruned[t.grad.reshape(-1)[pruned].abs().argsort(descending=True)[:k]]
                    kept = (mk == 1).nonzero().reshape(-1)
                    drop = kept[t.detach().reshape(-1)[kept].abs().argsort()[:k]]
                    mk[grow], mk[drop] = 1, 0
                    with torch.no_grad():
                        t.view(-1)[grow] = 0.0  # regrown weights start from zero (RigL)
                    state["regrown"] += k
            state["masks"], state["sparsity"] = masks, s
        w.apply(state["masks"])

    recover(m, ctx, Finetune(method=cfg.method, epochs=cfg.epochs, lr=cfg.lr, augment=cfg.augment), on_step=on_step)
    w.apply(state["masks"])
    zeros, total = w.zeros()
    ctx.note(f"gradual pruning (AGP over {cfg.prune_fraction_of_training:.0%} of {cfg.epochs} epochs, {cfg.scope}): "
             f"{100 * zeros / total:.1f}% of {total:,} weights are zero"
             + (f"; {state['regrown']:,} weights regrown on the way" if cfg.regrow_fraction else ""))
    return m.eval()


@dataclasses.dataclass
class IterativePruneConfig(Config):
    """Prune -> fine-tune cycles: each cycle raises the sparsity (AGP spacing) and recovers."""

    final_sparsity: float = 0.9
    cycles: int = 4
    epochs_per_cycle: int = 3
    scope: str = "global"
    method: str = "kd"
    lr: float = 1e-3
    targets: Targets = dataclasses.field(default_factory=lambda: Targets(types=list(PRUNABLE_TYPES)))

    def validate(self) -> None:
        check_range("final_sparsity", self.final_sparsity, 0, 1, hi_open=True)
        check_choice("scope", self.scope, ("global", "layer", "lamp"))
        check_choice("method", self.method, ("kd", "plain"))
        if self.cycles < 1 or self.epochs_per_cycle < 1:
            raise ConfigError("cycles and epochs_per_cycle must be >= 1")
        if isinstance(self.targets, (dict, list, str)):
            self.targets = Targets.from_dict(self.targets)


@register_technique("prune.iterative", IterativePruneConfig, needs=("train_data",),
                    summary="iterative magnitude pruning: prune -> fine-tune cycles up to a final sparsity")
def iterative_prune(model: nn.Module, cfg: IterativePruneConfig, ctx: Context) -> nn.Module:
    """Classic iterative pruning (Han et al. 2015): each cycle prunes more, then recovers with masks held."""
    from ..distill.trainer import recover
    from ..distill.finetune import Finetune

    m, w = _setup(model, cfg, ctx, "prune.iterative")
    history = []
    for c in range(1, cfg.cycles + 1):
        s = agp(c, final=cfg.final_sparsity, start=0, end=cfg.cycles)
        masks = w.masks(s)

        def hold(step: int, total: int, masks=masks) -> None:
            w.apply(masks)

        hold(0, 0)
        recover(m, ctx, Finetune(method=cfg.method, epochs=cfg.epochs_per_cycle, lr=cfg.lr), on_step=hold)
        history.append(round(s, 4))
    ctx.note(f"iterative pruning: {cfg.cycles} prune -> fine-tune cycles, sparsity {history}")
    return m.eval()
