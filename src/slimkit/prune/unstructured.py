"""Unstructured and N:M pruning with masks (torch.nn.utils.prune keeps them
through fine-tuning); masks are made permanent before export."""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as P
import torch.nn.utils.prune as tprune

from ..core.config import Config, check_choice, check_range
from ..core.context import Context
from ..core.result import Compressed
from ..core.errors import ConfigError
from ..core.graph import holds_program
from ..core.registry import register_technique
from ..core.rewrite import split_attention
from ..core.targets import Targets
from .importance import CRITERIA, accumulate_gradients
from .program_heads import program_heads


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n highest of every m consecutive weights along the input dimension."""
    w = score.reshape(score.shape[0], -1)
    if w.shape[1] % m:
        raise ConfigError(f"input size {w.shape[1]} is not divisible by M={m} for {n}:{m} sparsity")
    g = w.reshape(w.shape[0], -1, m)
    idx = g.topk(n, dim=-1).indices
    mask = torch.zeros_like(g).scatter_(-1, idx, 1.0)
    return mask.reshape(score.shape)


#: what unstructured pruning (one-shot, gradual, iterative) masks by default: recurrent layers too, so that "90%
#: sparsity" of a GRU model does not leave its GRU dense
PRUNABLE_TYPES = ("Linear", "Conv1d", "Conv2d", "GRU", "LSTM")


def packed_parts(model: nn.Module, scope: str, example) -> dict:
    """Under LAMP, a program's packed q|k|v projections and how many layers each packs (ranked part by part, as the
    separate projections of the same model given as Python code); nothing otherwise."""
    parts: dict = {}
    if scope == "lamp" and holds_program(model):
        for u in program_heads(model, example)[0]:
            parts.update(u.packed())
    return parts


@dataclasses.dataclass
class MagnitudePruneConfig(Config):
    """Unstructured pruning to ``sparsity`` by an importance criterion, layer-wise or global; or N:M."""

    sparsity: float = 0.5
    #: global: one magnitude ranking over all layers; layer: the same sparsity in each; lamp: one ranking of
    #: layer-adaptive scores (LAMP, Lee et al., ICLR 2021: w^2 over the sum of w^2 of the layer's weights at least
    #: as large), which never empties a small layer (depthwise, first and last layers) the way a plain global
    #: ranking does on small models
    scope: str = "global"
    criterion: str = "magnitude"  # magnitude | l2 | taylor | random
    pattern: str = ""  # "" (unstructured) or "N:M", e.g. "2:4"
    targets: Targets = dataclasses.field(default_factory=lambda: Targets(types=list(PRUNABLE_TYPES)))

    def validate(self) -> None:
        check_range("sparsity", self.sparsity, 0, 1, hi_open=True)
        check_choice("scope", self.scope, ("global", "layer", "lamp"))
        check_choice("criterion", self.criterion, ("magnitude", "l1", "l2", "taylor", "random"))
        if self.pattern:
            try:
                n, m = (int(v) for v in self.pattern.split(":"))
            except ValueError:
                raise ConfigError(f"pattern={self.pattern!r}: write N:M, e.g. 2:4") from None
            if not 0 < n < m:
                raise ConfigError(f"pattern={self.pattern!r}: need 0 < N < M")
        if isinstance(self.targets, (dict, list, str)):
            self.targets = Targets.from_dict(self.targets)


class _Param:
    """One weight tensor of a layer, seen as a layer by the importance criteria (they read ``.weight``)."""

    def __init__(self, module: nn.Module, pname: str):
        self.module, self.pname = module, pname

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.pname)


def weight_tensors(model: nn.Module, targets: Targets, what: str = "prune") -> list[tuple[str, nn.Module, str]]:
    """(name, module, parameter) of every weight ``targets`` selects: Linear/Conv ``weight`` and each
    ``weight_ih_l*``/``weight_hh_l*`` of the GRU/LSTM layers (named ``rnn.weight_hh_l0``)."""
    out = []
    for n, m in targets.select(model):
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            out.append((n, m, "weight"))
        elif isinstance(m, nn.RNNBase):
            out += [(f"{n}.{p}", m, p) for p in m._flat_weights_names if p.startswith("weight")]
    if not out:
        raise ConfigError(f"no Linear/Conv/GRU/LSTM layer matched the targets; nothing to {what}")
    return out


def weight_layers(model: nn.Module, targets: Targets, what: str = "prune") -> list[tuple[str, nn.Module]]:
    """The Linear/Conv layers ``targets`` selects; a one-line error when there are none."""
    layers = [(n, m) for n, m in targets.select(model) if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if not layers:
        raise ConfigError(f"no Linear/Conv layer matched the targets; nothing to {what}")
    return layers


class PrunedModel(Compressed):
    """A model with live reparametrizations (pruning masks, shared-weight codebooks) that
    fine-tuning respects; ``slimkit_finalize`` writes them into plain weights."""

    def __init__(self, model: nn.Module, info: dict):
        super().__init__()
        self.model, self.info = model, info

    def forward(self, *x):
        return self.model(*x)

    def slimkit_finalize(self) -> nn.Module:
        """Make masks / codebooks permanent: a plain model, no reparametrization left."""
        # in place: modules under torch's pruning reparametrization cannot be deep-copied
        for mod in self.model.modules():
            for hook in list(mod._forward_pre_hooks.values()):
                if isinstance(hook, tprune.BasePruningMethod):
                    tprune.remove(mod, hook._tensor_name)
            if P.is_parametrized(mod, "weight"):
                P.remove_parametrizations(mod, "weight", leave_parametrized=True)
        return self.model


def rank_masks(scores: dict, sparsity: float, scope: str, note=None, parts: dict | None = None) -> dict:
    """Masks (1 = kept) removing ``sparsity`` of the weights by their scores: per layer (``layer``), or by one
    ranking over all layers of the scores (``global``) or of their LAMP transform (``lamp``), exactly k weights
    removed. A layer one ranking would empty keeps its strongest 2% (said through ``note``). ``parts``: layers
    whose output rows are several layers packed (a program's q|k|v projection): LAMP scores each part alone, as
    it scores the separate projections of the same model given as Python code."""
    if scope == "layer":
        masks = {}
        for n, s in scores.items():
            k = int(round(sparsity * s.numel()))
            mask = torch.ones_like(s)
            if k:
                mask.view(-1)[s.reshape(-1).argsort()[:k]] = 0
            masks[n] = mask
        return masks
    parts = parts or {}
    ranked = ({n: torch.cat([lamp_scores(c) for c in sc.chunk(parts.get(n, 1), 0)]) for n, sc in scores.items()}
              if scope == "lamp" else scores)
    allv = torch.cat([sc.reshape(-1) for sc in ranked.values()])
    k = int(round(sparsity * allv.numel()))
    flat = torch.ones_like(allv)
    flat[allv.argsort()[:k]] = 0
    masks, off = {}, 0
    for n, sc in scores.items():
        masks[n] = flat[off:off + sc.numel()].reshape(sc.shape)
        off += sc.numel()
        if masks[n].sum() == 0:  # one global ranking emptied a small layer: keep its strongest 2% alive
            keep = max(1, int(0.02 * sc.numel()))
            masks[n].view(-1)[sc.reshape(-1).argsort(descending=True)[:keep]] = 1
            if note is not None:
                note(f"global pruning would have removed every weight of {n}; kept its {keep} largest")
    return masks


def lamp_scores(score: torch.Tensor) -> torch.Tensor:
    """LAMP: each weight's squared score over the sum of the squared scores of its layer's weights that are at
    least as large (the largest weight of every layer scores 1, so one global ranking keeps some of each layer)."""
    flat = score.reshape(-1).double().pow(2)
    order = flat.argsort()
    sorted_ = flat[order]
    tail = sorted_.flip(0).cumsum(0).flip(0)  # sum of the weights >= each, in ascending order
    out = torch.empty_like(flat)
    out[order] = sorted_ / tail.clamp_min(1e-30)
    return out.reshape(score.shape).float()


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    return {n: float((m.weight == 0).float().mean()) for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}


@register_technique("prune.magnitude", MagnitudePruneConfig, needs=("example_inputs",),
                    summary="unstructured (global or layer-wise) or N:M pruning by magnitude / Taylor / random")
def magnitude_prune(model: nn.Module, cfg: MagnitudePruneConfig, ctx: Context) -> PrunedModel:
    """Unstructured pruning with masks kept through fine-tuning."""
    m = copy.deepcopy(model)
    split_attention(m)  # MultiheadAttention reads its weights directly: as Linear calls, their masks apply
    layers = weight_tensors(m, cfg.targets)
    if cfg.criterion == "taylor":
        if ctx.data is None or ctx.data.train is None or ctx.data.train.targets is None:
            raise ConfigError("taylor importance needs labelled training data")
        accumulate_gradients(m, ctx.data)
    fn = CRITERIA[cfg.criterion]
    scores = {n: fn(_Param(mod, p), per="weight", seed=ctx.seed) for n, mod, p in layers}
    masks = {}
    if cfg.pattern:
        n_, m_ = (int(v) for v in cfg.pattern.split(":"))
        masks = {n: nm_mask(s, n_, m_) for n, s in scores.items()}
    else:
        masks = rank_masks(scores, cfg.sparsity, cfg.scope, ctx.note, packed_parts(m, cfg.scope, ctx.example_inputs))
    for n, mod, p in layers:
        if masks[n].sum() == 0:
            raise ConfigError(f"sparsity {cfg.sparsity} would remove every weight of {n}; lower it or use scope: layer")
        tprune.custom_from_mask(mod, p, masks[n])
    m.zero_grad(set_to_none=True)
    total = sum(int(masks[n].numel()) for n in masks)
    zeros = sum(int((masks[n] == 0).sum()) for n in masks)
    info = {"sparsity": zeros / total, "pattern": cfg.pattern or "unstructured", "scope": cfg.scope,
            "criterion": cfg.criterion, "per_layer": {n: float((masks[n] == 0).float().mean()) for n in masks}}
    ctx.note(f"pruned {zeros:,} of {total:,} weights ({100 * zeros / total:.1f}%, {info['pattern']}, {cfg.scope}, "
             f"{cfg.criterion}); dense ONNX files do not shrink from zeros alone: see size_bytes_zstd")
    return PrunedModel(m, info)
