"""Structured pruning that physically removes channels, neurons and attention
heads, keeping every coupled layer consistent (see ``channels.py``), with
uniform, global or sensitivity-based ratio allocation across layers and an
optional sparse-training phase (group lasso on channels, or L1 on BatchNorm
scales) that pushes whole channels to zero before they are removed.

The result is the user's own module class with smaller layers: a plain
``nn.Module`` that exports to ONNX like the original."""
from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.config import Config, check_choice, check_range, Tunable
from ..core.context import Context
from ..core.errors import ConfigError, first_line
from ..core.registry import register_technique
from ..core.targets import Targets
from ..evaluate.environment import cpu_info
from ..evaluate.latency import time_interleaved, torch_runner
from ..evaluate.macs import count_macs, count_params
from ..evaluate.sensitivity import DropMeter, Step, measure
from ..core.graph import holds_program, program_fixed_units, set_module
from ..core.rewrite import split_attention
from .blocks import attention_units, find_units
from .program_heads import program_heads
from .depth import check_drops, drop_blocks, droppable_blocks
from .channels import ChannelGraph
from .importance import accumulate_gradients
from .kernels import kernel_options, shrink_kernels

LEVELS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


@dataclasses.dataclass
class StructuredPruneConfig(Config):
    """Remove whole channels.

    ``target_macs`` (fraction of MACs to remove; 0 = use ``ratio``) or ``ratio``
    (fraction of channels per group). ``allocation``: ``uniform`` (same ratio in
    every group), ``global`` (one ranking of normalised channel scores),
    ``sensitivity`` (prune each group alone at several ratios on held-in data,
    then greedily cut where the metric drops least per unit of ``budget``)."""

    TUNABLE: ClassVar = {"target_macs": Tunable(0.2, 0.8, step=0.05),
                         "allocation": Tunable(choices=("uniform", "sensitivity"))}

    ratio: float = 0.5
    target_macs: float = 0.0
    allocation: str = "uniform"  # uniform | global | sensitivity
    budget: str = "macs"  # what sensitivity allocation saves: macs | params | latency
    criterion: str = "l2"  # l1 | l2 | taylor | bn_scale | random
    max_ratio: float = 0.9  # never remove more than this share of one group
    round_to: int = 8  # keep channel counts a multiple of this: ORT's blocked (NCHWc) kernels need 8 on AVX2
    heads: float = 0.0  # share of attention heads to remove in nn.MultiheadAttention layers
    sparse_penalty: str = "none"  # none | group_lasso | l1_bn: a sparse-training phase before pruning
    sparse_strength: float = 1e-3
    sparse_epochs: int = 0
    eval_samples: int = 512
    #: explicit widths: channel group ("+"-joined producer layers, as the report's table names them) -> share of its
    #: channels kept, in (0, 1]; groups not named stay whole. When given, ratio/target/allocation are not used.
    widths: dict = dataclasses.field(default_factory=dict)
    targets: Targets = dataclasses.field(default_factory=lambda: Targets(types=["Linear", "Conv1d", "Conv2d"]))

    def validate(self) -> None:
        for k, v in self.widths.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
                raise ConfigError(f"widths[{k!r}]={v!r}: the share of channels kept must be in (0, 1]")
        check_range("ratio", self.ratio, 0, 1, hi_open=True)
        check_range("target_macs", self.target_macs, 0, 1, hi_open=True)
        check_range("max_ratio", self.max_ratio, 0, 1, hi_open=True)
        check_range("heads", self.heads, 0, 1, hi_open=True)
        check_choice("allocation", self.allocation, ("uniform", "global", "sensitivity"))
        check_choice("budget", self.budget, ("macs", "params", "latency"))
        check_choice("criterion", self.criterion, ("l1", "magnitude", "l2", "taylor", "bn_scale", "random"))
        check_choice("sparse_penalty", self.sparse_penalty, ("none", "group_lasso", "l1_bn"))
        if self.round_to < 1 or self.sparse_epochs < 0:
            raise ConfigError("round_to must be >= 1 and sparse_epochs >= 0")
        if self.sparse_penalty != "none" and self.sparse_epochs == 0:
            raise ConfigError(f"sparse_penalty={self.sparse_penalty} needs sparse_epochs >= 1")
        if self.allocation == "sensitivity" and self.target_macs == 0 and self.budget == "macs" and not self.widths:
            raise ConfigError("sensitivity allocation needs a target: set target_macs (e.g. 0.5)")
        if isinstance(self.targets, (dict, list, str)):
            self.targets = Targets.from_dict(self.targets)


# -- scoring -------------------------------------------------------------------------

def _rows(mod: nn.Module) -> torch.Tensor:
    return mod.weight.detach().flatten(1)


def _cols(mod: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    w = mod.weight.detach()
    return w.transpose(0, 1)[idx].flatten(1)


def use_index(u, size: int) -> torch.Tensor:
    """Input positions of a use for each of the group's ``size`` channels: [size, expand]."""
    base = u.offset + torch.arange(size)[:, None] * u.expand
    return base + torch.arange(u.expand)[None, :]


def channel_scores(model: nn.Module, groups: dict, criterion: str, seed: int = 0) -> dict[int, torch.Tensor]:
    """Importance of each channel of each group: the sum over the group's
    layers of the criterion, each layer normalised by its mean so that wide
    and narrow layers weigh alike (producers' rows, consumers' columns,
    BatchNorm scales for ``bn_scale``)."""
    out = {}
    g = torch.Generator().manual_seed(seed)
    for gid, grp in groups.items():
        size = grp["size"]
        if criterion == "random":
            out[gid] = torch.rand(size, generator=g)
            continue
        parts = []
        if criterion == "bn_scale":
            parts = [model.get_submodule(u.name).weight.detach().abs() for u in grp["uses"] if u.role == "bn"]
            if not parts:  # no BatchNorm in the group: fall back to the weights
                criterion = "l2"
        if criterion != "bn_scale":
            for name in grp["producers"]:
                mod = model.get_submodule(name)
                w = _rows(mod)
                if criterion == "taylor":
                    if mod.weight.grad is None:
                        raise ConfigError("taylor importance needs gradients; the data has no labels to compute them")
                    s = (w * mod.weight.grad.flatten(1)).abs().sum(1)
                else:
                    s = w.abs().sum(1) if criterion in ("l1", "magnitude") else w.pow(2).sum(1)
                parts.append(s)
            for u in grp["uses"]:
                if u.role != "in":
                    continue
                mod = model.get_submodule(u.name)
                idx = use_index(u, size)
                cols = _cols(mod, idx.reshape(-1)).reshape(size, -1)
                if criterion == "taylor":
                    gcols = mod.weight.grad.transpose(0, 1)[idx.reshape(-1)].flatten(1).reshape(size, -1)
                    parts.append((cols * gcols).abs().sum(1))
                else:
                    parts.append(cols.abs().sum(1) if criterion in ("l1", "magnitude") else cols.pow(2).sum(1))
        out[gid] = sum(p / (p.mean() + 1e-12) for p in parts)
    return out


# -- applying a plan -----------------------------------------------------------------

def _slice_param(mod: nn.Module, name: str, idx: torch.Tensor, dim: int) -> None:
    p = getattr(mod, name, None)
    if p is None:
        return
    new = p.detach().index_select(dim, idx).clone()
    if isinstance(p, nn.Parameter):
        setattr(mod, name, nn.Parameter(new, requires_grad=p.requires_grad))
    else:
        setattr(mod, name, new)


def apply_keep(model: nn.Module, groups: dict, keep: dict[int, torch.Tensor]) -> None:
    """Remove, in place, every channel not listed in ``keep[gid]`` (sorted indices)."""
    in_keep: dict[str, list[tuple[int, int, torch.Tensor]]] = {}
    for gid, idx in keep.items():
        grp = groups[gid]
        if len(idx) == grp["size"]:
            continue
        for name in grp["producers"]:
            mod = model.get_submodule(name)
            _slice_param(mod, "weight", idx, 0)
            _slice_param(mod, "bias", idx, 0)
            if isinstance(mod, nn.Linear):
                mod.out_features = len(idx)
            else:
                mod.out_channels = len(idx)
        for u in grp["uses"]:
            if u.role == "in":
                in_keep.setdefault(u.name, []).append((u.offset, grp["size"] * u.expand,
                                                       use_index(u, grp["size"])[idx].reshape(-1)))
            else:  # bn / ln / dw / vec index the same channels; several segments compose via the same path
                role = f"vec{u.dim}" if u.role == "vec" else u.role
                in_keep.setdefault(u.name + "\0" + role, []).append((u.offset, grp["size"] * u.expand,
                                                                     use_index(u, grp["size"])[idx].reshape(-1)))
    for key, parts in in_keep.items():
        name, _, role = key.partition("\0")
        if role.startswith("vec"):  # a parameter or buffer, by path, along dimension ``dim``
            parent, _, attr = name.rpartition(".")
            mod, dim = model.get_submodule(parent), int(role[3:])
            width = getattr(mod, attr).shape[dim]
        else:
            mod = model.get_submodule(name)
            width = mod.weight.shape[1] if role == "" else mod.weight.shape[0]
        mask = torch.ones(width, dtype=torch.bool)
        for off, span, kept in parts:
            mask[off:off + span] = False
            mask[kept] = True
        idx = mask.nonzero().reshape(-1)
        if role == "":
            _slice_param(mod, "weight", idx, 1)
            if isinstance(mod, nn.Linear):
                mod.in_features = len(idx)
            else:
                mod.in_channels = len(idx)
        elif role == "dw":
            for p in ("weight", "bias"):
                _slice_param(mod, p, idx, 0)
            mod.in_channels = mod.out_channels = mod.groups = len(idx)
        elif role == "bn":
            for p in ("weight", "bias", "running_mean", "running_var"):
                _slice_param(mod, p, idx, 0)
            mod.num_features = len(idx)
        elif role == "ln":
            for p in ("weight", "bias"):
                _slice_param(mod, p, idx, 0)
            mod.normalized_shape = (len(idx),)
        else:
            _slice_param(mod, attr, idx, dim)


def keep_from_counts(scores: dict[int, torch.Tensor], counts: dict[int, int]) -> dict[int, torch.Tensor]:
    return {g: scores[g].argsort(descending=True)[:counts[g]].sort().values for g in counts}


def kept_count(n_keep: float, size: int, cfg: StructuredPruneConfig) -> int:
    """Channels a group of ``size`` keeps for ``n_keep`` asked: at least ``1 - max_ratio`` of them, rounded up to
    ``round_to`` (ORT's blocked kernels) where the group is that wide."""
    floor = max(1, math.ceil(size * (1 - cfg.max_ratio)))
    k = max(floor, int(round(n_keep)))
    if cfg.round_to > 1 and size >= cfg.round_to:
        k = min(size, max(cfg.round_to, int(math.ceil(k / cfg.round_to)) * cfg.round_to))
    return min(size, k)


# -- attention heads ----------------------------------------------------------------

class SlimMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (batch_first) with fewer heads: the inner width
    (heads x head_dim) no longer equals the embedding width, which the torch
    class cannot express. Same call signature; returns ``(output, None)``."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads, self.head_dim, self.dropout = num_heads, head_dim, dropout
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(embed_dim, inner, bias=bias) for _ in range(3))
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None, **_):
        b, lq, _ = query.shape
        lk = key.shape[1]

        def split(t, n):
            return t.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(query), lq), split(self.k_proj(key), lk), split(self.v_proj(value), lk)
        # explicit matmuls (not SDPA): torch's FLOP counter and every ONNX runtime see them
        att = (q @ k.transpose(-1, -2)) * (self.head_dim ** -0.5)
        if attn_mask is not None:
            att = att.masked_fill(attn_mask, -math.inf) if attn_mask.dtype == torch.bool else att + attn_mask
        if key_padding_mask is not None:
            att = att.masked_fill(key_padding_mask.bool()[:, None, None, :], -math.inf)
        att = F.dropout(att.softmax(-1), self.dropout, self.training)
        o = att @ v
        return self.out_proj(o.transpose(1, 2).reshape(b, lq, -1)), None


def prune_heads(model: nn.Module, names: list[str], share: float) -> dict[str, tuple[int, int]]:
    """Replace each named ``nn.MultiheadAttention`` by a ``SlimMultiheadAttention``
    without its least important heads (L2 norm of the head's q/k/v rows and
    out_proj columns). Returns {name: (heads before, after)}."""
    done = {}
    for name in names:
        mha = model.get_submodule(name)
        h, e = mha.num_heads, mha.embed_dim
        d = e // h
        keep_n = max(1, h - int(round(share * h)))
        w = mha.in_proj_weight.detach().reshape(3, h, d, e)
        o = mha.out_proj.weight.detach().reshape(e, h, d)
        score = w.pow(2).sum((0, 2, 3)) + o.pow(2).sum((0, 2))
        keep = score.argsort(descending=True)[:keep_n].sort().values
        rows = (keep[:, None] * d + torch.arange(d)[None]).reshape(-1)
        bias = mha.in_proj_bias is not None
        new = SlimMultiheadAttention(e, keep_n, d, dropout=mha.dropout, bias=bias)
        with torch.no_grad():
            for i, lin in enumerate((new.q_proj, new.k_proj, new.v_proj)):
                lin.weight.copy_(mha.in_proj_weight[i * e:(i + 1) * e][rows])
                if bias:
                    lin.bias.copy_(mha.in_proj_bias[i * e:(i + 1) * e][rows])
            new.out_proj.weight.copy_(mha.out_proj.weight[:, rows])
            if bias:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        set_module(model, name, new)
        done[name] = (h, keep_n)
    return done


# -- sparse training ---------------------------------------------------------------

def sparse_penalty(model: nn.Module, groups: dict, kind: str):
    """A callable returning the penalty: group lasso sums, per channel, the L2
    norm of all weights that channel owns across its coupled layers; ``l1_bn``
    is network slimming's L1 on BatchNorm scales."""
    mods = {n: model.get_submodule(n) for grp in groups.values() for n in grp["producers"]}
    idx = {gid: [(model.get_submodule(u.name), use_index(u, grp["size"]).reshape(-1), grp["size"])
                 for u in grp["uses"] if u.role == "in"] for gid, grp in groups.items()}
    bns = [model.get_submodule(u.name) for grp in groups.values() for u in grp["uses"] if u.role == "bn"]

    def penalty() -> torch.Tensor:
        if kind == "l1_bn":
            return sum(b.weight.abs().sum() for b in bns) if bns else torch.zeros(())
        total = torch.zeros(())
        for gid, grp in groups.items():
            sq = sum(mods[n].weight.flatten(1).pow(2).sum(1) for n in grp["producers"])
            for mod, ix, size in idx[gid]:
                sq = sq + mod.weight.transpose(0, 1)[ix].flatten(1).pow(2).sum(1).reshape(size, -1).sum(1)
            total = total + (sq + 1e-12).sqrt().sum()
        return total

    return penalty


# -- the technique ------------------------------------------------------------------

@dataclasses.dataclass
class _Plan:
    graph: ChannelGraph
    groups: dict  # prunable groups only
    skipped: dict  # name -> reasons
    scores: dict


def analyse(model: nn.Module, example, cfg: StructuredPruneConfig, graph: str = "auto") -> _Plan:
    """The channel groups of ``model``: on its torch.fx graph (``graph="fx"``), its torch.export capture
    (``"export"``), or (``"auto"``) fx where it traces and the capture for models fx cannot trace that hold no
    attention or recurrent layer (Hugging Face CNNs; transformers and RNNs go to ``blocks.py``'s units). Raises
    ``ConfigError`` when neither applies."""
    prunable = {n for n, m in cfg.targets.select(model) if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}
    if graph == "auto":
        try:
            return analyse(model, example, cfg, "fx")
        except ConfigError as e:
            if has_block_units(model):
                raise
            why = first_line(e, 160)
        try:
            return analyse(model, example, cfg, "export")
        except ConfigError as e:
            raise ConfigError(f"{why}; {first_line(e, 160)}") from None
    graph = ChannelGraph(model, example, prunable, graph)
    allg = graph.groups()
    groups = {g: v for g, v in allg.items() if not v["blocked"]}
    skipped = {"+".join(v["producers"]): v["blocked"] for v in allg.values() if v["blocked"]}
    return _Plan(graph, groups, skipped, {})


def has_block_units(model: nn.Module) -> bool:
    """Whether ``model`` holds attention or recurrent layers (pruned as ``blocks.py`` units, not channels)."""
    return bool(attention_units(model)) or any(isinstance(m, (nn.MultiheadAttention, nn.RNNBase))
                                               for m in model.modules())


def _pruned(model: nn.Module, plan: _Plan, counts: dict[int, int]) -> nn.Module:
    m = copy.deepcopy(model)
    apply_keep(m, plan.groups, keep_from_counts(plan.scores, counts))
    return m


def _allocate(model, plan: _Plan, cfg: StructuredPruneConfig, ctx: Context, example) -> tuple[dict, list]:
    sizes = {g: v["size"] for g, v in plan.groups.items()}
    base_macs = count_macs(model, example)

    def uniform(r):
        return {g: kept_count(s * (1 - r), s, cfg) for g, s in sizes.items()}

    def global_(r):
        norm = {g: plan.scores[g] / (plan.scores[g].mean() + 1e-12) for g in sizes}
        allv = torch.cat(list(norm.values()))
        k = int(round(r * allv.numel()))
        thr = allv.sort().values[k - 1] if k > 0 else -math.inf
        return {g: kept_count(int((norm[g] > thr).sum()), s, cfg) for g, s in sizes.items()}

    def macs_removed(counts):
        return 1 - count_macs(_pruned(model, plan, counts), example) / base_macs

    if cfg.widths:
        label = {g: "+".join(v["producers"]) for g, v in plan.groups.items()}
        unknown = sorted(set(cfg.widths) - set(label.values()))
        if unknown:
            raise ConfigError(f"widths names unknown channel group(s) {', '.join(unknown)}; this model's groups: "
                              f"{', '.join(sorted(label.values()))}")
        return {g: kept_count(s * cfg.widths.get(label[g], 1.0), s, cfg) for g, s in sizes.items()}, []

    if cfg.allocation in ("uniform", "global"):
        fn = uniform if cfg.allocation == "uniform" else global_
        if cfg.target_macs == 0:
            return fn(cfg.ratio), []
        lo, hi = 0.0, cfg.max_ratio
        best = fn(hi)
        if macs_removed(best) < cfg.target_macs:
            raise ConfigError(f"target_macs={cfg.target_macs} cannot be met: at max_ratio={cfg.max_ratio} the "
                              f"prunable layers save {macs_removed(best):.1%}; raise max_ratio or lower the target")
        for _ in range(14):  # bisection on the ratio that meets the MAC target
            mid = (lo + hi) / 2
            if macs_removed(fn(mid)) >= cfg.target_macs:
                hi, best = mid, fn(mid)
            else:
                lo = mid
        return best, []
    return _sensitivity(model, plan, cfg, ctx, example, sizes, base_macs)


def _latency_saved(base: nn.Module, model: nn.Module, x) -> float:
    """1 - candidate / baseline PyTorch latency, timed interleaved (evaluate.latency)."""
    t = time_interleaved({"base": torch_runner(base, x), "cand": torch_runner(model, x)}, runs=7, warmup=1, desc=None)
    return 1 - float(np.median(t["cand"]) / np.median(t["base"]))


def _sensitivity(model, plan, cfg, ctx, example, sizes, base_macs):
    """Prune each group alone at LEVELS; record metric drop, MAC / param /
    latency saving; then take greedy steps with the least drop per unit saved (``evaluate.sensitivity``)."""
    meter = DropMeter(model, ctx.data, cfg.eval_samples, ctx.seed)
    xb = meter.split.slice(0, 64).inputs
    base_params = count_params(model)
    levels = [lv for lv in LEVELS if lv <= cfg.max_ratio]

    def count(g, lv):
        return kept_count(sizes[g] * (1 - lv), sizes[g], cfg)

    def probe(g, lv):
        counts = {**sizes, g: count(g, lv)}
        if lv != levels[0] and counts[g] == count(g, levels[levels.index(lv) - 1]):
            return None  # rounding to round_to made this level the previous one
        m = _pruned(model, plan, counts)
        drop = meter(m)[0]
        saved = {"macs": 1 - count_macs(m, example) / base_macs, "params": 1 - count_params(m) / base_params,
                 "latency": _latency_saved(model, m, xb)}
        return Step(drop, saved[cfg.budget], {
            "group": "+".join(plan.groups[g]["producers"]), "ratio": lv, "channels": f"{counts[g]}/{sizes[g]}",
            "drop": round(drop, 5), "macs_saved": round(saved["macs"], 4),
            "params_saved": round(saved["params"], 4), "latency_saved": round(saved["latency"], 4)})

    sens = measure(sizes, levels, probe, "sensitivity (one group at a time)")
    target = cfg.target_macs if cfg.target_macs else cfg.ratio

    def counts_of(level):
        return {g: (count(g, levels[level[g] - 1]) if level[g] else sizes[g]) for g in sizes}

    def achieved(level):
        m = _pruned(model, plan, counts_of(level))
        if cfg.budget == "macs":
            return 1 - count_macs(m, example) / base_macs
        if cfg.budget == "params":
            return 1 - count_params(m) / base_params
        return _latency_saved(model, m, xb)

    level = sens.allocate(target, achieved, f"{cfg.budget} target {target} cannot be met within "
                          f"max_ratio={cfg.max_ratio} (reached {{got:.1%}}); raise max_ratio or lower the target"
                          + _program_hint(model).replace("{", "{{").replace("}", "}}"))
    return counts_of(level), sens.table


def _program_hint(model: nn.Module) -> str:
    """Why a ``.pt2`` program prunes less than the same model given as Python code, for a refusal's message."""
    fixed = program_fixed_units(model)
    return (f"; in this .pt2 program the {' and '.join(fixed)} are not prunable (their counts are constants of "
            "the program's reshapes and ops, which slimkit could not follow: the warnings say where): give the model "
            "as Python code (pkg.module:factory) to prune them" if fixed else "")


def _check_runs(model: nn.Module, example, ref_shape: tuple, hard_coded: str) -> None:
    """The pruned model still runs on ``example`` and gives the original's output shape; a one-line error if not."""
    with torch.no_grad():
        try:
            out_shape = tuple(model(*example).shape)
        except Exception as e:  # noqa: BLE001 - whatever the user's forward raises on the new widths
            raise ConfigError(f"the pruned model no longer runs ({first_line(e, 120)}); its forward probably "
                              f"hard-codes {hard_coded}") from None
    if out_shape != ref_shape:
        raise ConfigError(f"pruning changed the output shape {ref_shape} -> {out_shape}; exclude the output layer")


@dataclasses.dataclass
class WidthSearchConfig(StructuredPruneConfig):
    """Architecture search over the model's own structure (NAS): the planner draws, for every prunable channel
    group of *this* model, the share of channels kept (1/8 steps from 1/4 to 1), and for every convolution whose
    kernel can shrink, how many steps of 2 it shrinks (``kernels``: 0 = as is, 1 = 5x5 -> 3x3, ...; see
    ``prune/kernels.py``), and for every residual block whether it is dropped (``drop``: elastic depth, see
    ``prune/depth.py``). The candidate keeps the teacher's most important channels, the centre of its kernels
    (refitted on calibration data) and its other blocks, and is recovered by distillation from it in the stage's
    fine-tune."""

    TUNABLE: ClassVar = {}
    WIDTH_STEPS: ClassVar = Tunable(0.25, 1.0, step=0.125)
    #: the search starts from the shapes people pick by hand: the distill-student recipe's uniform half width with
    #: its recovery (40 epochs, T = 4), and a uniform three-quarter width, kernels and blocks as they are; the
    #: sampler looks for better from there
    SEED_POINTS: ClassVar = ({"widths": 0.5, "kernels": 0, "drop": 0, "finetune.epochs": 40,
                              "finetune.temperature": 4.0},
                             {"widths": 0.75, "kernels": 0, "drop": 0, "finetune.epochs": 40,
                              "finetune.temperature": 4.0})

    #: convolution name -> shrink step of its kernel (0: as is); names not given stay as they are
    kernels: dict = dataclasses.field(default_factory=dict)
    #: residual block name -> 1 to drop it (elastic depth, ``prune/depth.py``); names not given stay
    drop: dict = dataclasses.field(default_factory=dict)
    refit_samples: int = 256  # calibration samples the shrunk kernels are refitted on (0: centre crop only)

    def validate(self) -> None:
        super().validate()
        for k, v in self.kernels.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"kernels[{k!r}]={v!r}: a shrink step is a whole number >= 0 (1: 5x5 -> 3x3)")
        for k, v in self.drop.items():
            if v not in (0, 1) or isinstance(v, float):
                raise ConfigError(f"drop[{k!r}]={v!r}: 1 drops the block, 0 keeps it")
        if self.refit_samples < 0:
            raise ConfigError(f"refit_samples must be >= 0 (got {self.refit_samples})")

    @classmethod
    def label_value(cls, field: str, value) -> str:
        if field.startswith("kernels."):  # k: the kernel as it is; k-2: two smaller (5x5 -> 3x3)
            return f"k-{2 * value}" if value else "k"
        if field.startswith("drop."):  # b: the block kept; -b: dropped
            return "-b" if value else "b"
        return super().label_value(field, value)

    @classmethod
    def tunable_for(cls, model: nn.Module, example) -> dict:
        out = {}
        c = copy.deepcopy(model).eval()
        program = program_heads(c, tuple(example)) if holds_program(c) else None
        # a .pt2 transformer is pruned as block units (structured_prune), so it is searched as block units
        if not (program and program[0]):
            try:
                plan = analyse(copy.deepcopy(model).eval(), example, cls())
                out = {f"widths.{'+'.join(v['producers'])}": cls.WIDTH_STEPS for v in plan.groups.values()}
            except ConfigError:  # torch.fx cannot trace it (a Hugging Face transformer): its block units below
                pass
        if not out:  # attention heads, FFN widths, recurrent units: what structured_prune falls back to
            try:
                units, _ = _block_units(c, tuple(example), program)
            except ConfigError:
                units = []
            out = {f"widths.{u.name}": cls.WIDTH_STEPS for u in units}
        out.update({f"kernels.{n}": Tunable(choices=tuple(range(s + 1)))
                    for n, s in kernel_options(model, example).items()})
        out.update({f"drop.{n}": Tunable(choices=(0, 1)) for n in droppable_blocks(model, example)})
        return out


@register_technique("prune.widths", WidthSearchConfig, needs=("example_inputs",),
                    summary="NAS over the model's own structure: a kept share per channel group and a kernel size "
                            "per convolution (drawn by the planner), initialised from the teacher, recovered with KD")
def width_search(model: nn.Module, cfg: WidthSearchConfig, ctx: Context) -> nn.Module:
    """A candidate architecture from ``widths``, ``kernels`` and ``drop`` (none given: the model unchanged)."""
    steps = {n: s for n, s in cfg.kernels.items() if s}
    drops = [n for n, v in cfg.drop.items() if v]
    if not any(v < 1 for v in cfg.widths.values()) and not steps and not drops:
        return copy.deepcopy(model)
    if drops:
        check_drops(model, ctx.example_inputs, drops)
    if steps or drops:
        with torch.no_grad():
            ref_shape = tuple(copy.deepcopy(model).eval()(*ctx.example_inputs).shape)
    m = structured_prune(model, cfg, ctx) if cfg.widths else copy.deepcopy(model).eval()
    if steps:
        split = ctx.data.calib if cfg.refit_samples and ctx.has("calibration_data") else None
        rows = shrink_kernels(m, steps, split, cfg.refit_samples)
        ctx.tables["Kernel sizes"] = rows
        ctx.note(f"kernel sizes: {len(rows)} convolution(s) shrunk ({', '.join(r['layer'] + ' ' + r['kernel'] for r in rows)})"
                 + ("; refitted on calibration data" if split is not None else "; centre crop"))
        _check_runs(m, ctx.example_inputs, ref_shape, "a kernel size: leave that convolution's kernel as it is")
    if drops:
        drops, kept = _one_per_container(model, drops)
        rows = drop_blocks(m, drops)
        ctx.tables["Dropped blocks"] = rows
        ctx.note(f"depth: {len(rows)} residual block(s) dropped ({', '.join(drops)})"
                 + (f"; kept {', '.join(kept)}: every block of its container was drawn" if kept else ""))
        _check_runs(m, ctx.example_inputs, ref_shape, "a loop over a fixed count: keep that block")
    return m


def _one_per_container(model: nn.Module, drops: list[str]) -> tuple[list[str], list[str]]:
    """The drawn blocks less the last block of any container all of whose blocks were drawn (one must stay)."""
    out, kept = list(drops), []
    for parent in {n.rpartition(".")[0] for n in drops}:
        cont = model.get_submodule(parent) if parent else model
        names = [f"{parent}.{k}" if parent else k for k, _ in cont.named_children()]
        if all(n in drops for n in names):
            out.remove(names[-1])
            kept.append(names[-1])
    return out, kept


def off_block_widths(m: nn.Module, plan, counts: dict, cfg: StructuredPruneConfig) -> str:
    """What to say when this CPU's blocks are wider than ``round_to``: ONNX Runtime runs 2-D convolutions in blocks
    of channels (NCHWc: 8 with AVX2, 16 with AVX-512), and a width cut to a non-multiple costs a whole block, so its
    MACs drop without the time (the HF ResNet case in docs/BENCHMARKS.md). Empty when every cut convolution width
    sits on a block."""
    block = 16 if cpu_info().get("avx512f") else 8
    if block <= cfg.round_to:
        return ""
    off = []
    for g, k in counts.items():
        grp = plan.groups[g]
        conv = any(isinstance(_submodule(m, p), nn.Conv2d) for p in grp["producers"])
        if conv and k < grp["size"] and k % block:
            off.append(f"{'+'.join(grp['producers'])} {k}/{grp['size']}")
    if not off:
        return ""
    return (f"this CPU has AVX-512, where ONNX Runtime runs 2-D convolutions in blocks of {block} channels: "
            f"{len(off)} convolution group(s) were cut to widths off those blocks ({', '.join(off[:4])}"
            f"{', ...' if len(off) > 4 else ''}), which cost a whole block each, so their MACs drop without the time; "
            f"round_to: {block} keeps the widths on the blocks")


def _submodule(m: nn.Module, name: str):
    try:
        return m.get_submodule(name)
    except AttributeError:
        return None


@register_technique("prune.structured", StructuredPruneConfig, needs=("example_inputs",),
                    summary="remove whole channels / neurons / attention heads (coupled layers kept consistent); "
                            "uniform, global or sensitivity allocation; optional group-lasso sparse training")
def structured_prune(model: nn.Module, cfg: StructuredPruneConfig, ctx: Context) -> nn.Module:
    """Physically smaller model: the user's class with fewer channels."""
    example = ctx.example_inputs
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref_shape = tuple(m(*example).shape)
    heads_found, heads_left = program = program_heads(m, example) if holds_program(m) else ([], {})
    if heads_found:  # a .pt2 transformer: its heads are block units, with its FFN widths
        return _prune_units(model, m, cfg, ctx, example, ref_shape, "a .pt2 program holds attention: its heads, "
                            "feed-forward widths and recurrent units are pruned as block units", program)
    try:
        plan = analyse(m, example, cfg)
    except ConfigError as e:  # torch.fx cannot trace it: the block units of its torch.export capture
        return _prune_units(model, m, cfg, ctx, example, ref_shape, first_line(e, 160))
    if not plan.groups and not (cfg.heads and plan.graph.attention):
        why = "; ".join(f"{k}: {v[0]}" for k, v in list(plan.skipped.items())[:4])
        return _prune_units(model, m, cfg, ctx, example, ref_shape,
                            f"no channel group of {type(model).__name__} can be pruned safely ({why})")
    needs_labels = cfg.criterion == "taylor"
    if (cfg.sparse_epochs or cfg.allocation == "sensitivity" or needs_labels) and not ctx.has("train_data"):
        raise ConfigError("this configuration (sparse training / sensitivity / taylor) needs training data")
    if cfg.sparse_epochs:
        from ..distill.trainer import recover
        from ..distill.finetune import Finetune

        pen = sparse_penalty(m, plan.groups, cfg.sparse_penalty)
        method = "kd" if ctx.teacher is not None else "plain"
        recover(m, ctx, Finetune(method=method, epochs=cfg.sparse_epochs),
                extra_loss=lambda: cfg.sparse_strength * pen())
        plan = analyse(m, example, cfg)
    if needs_labels:
        if ctx.data.task != "classification":
            raise ConfigError("taylor importance needs a labelled classification task")
        accumulate_gradients(m, ctx.data)
    plan.scores = channel_scores(m, plan.groups, cfg.criterion, ctx.seed)
    table = []
    if plan.groups:
        counts, table = _allocate(m, plan, cfg, ctx, example)
        apply_keep(m, plan.groups, keep_from_counts(plan.scores, counts))
    else:
        counts = {}
    m.zero_grad(set_to_none=True)
    heads = prune_heads(m, plan.graph.attention, cfg.heads) if cfg.heads else {}
    for k, v in heads_left.items():  # attention of a .pt2 program whose layout program_heads could not follow
        plan.skipped[k] = [v]
        ctx.warn(f"structured pruning left {k} whole: {v}")
    _check_runs(m, example, ref_shape, "a channel count: exclude that layer in targets")
    per_group = {"+".join(plan.groups[g]["producers"]): f"{counts[g]}/{plan.groups[g]['size']}" for g in counts}
    m.slimkit_info = {"channels": per_group, "skipped": plan.skipped, "heads": heads, "sensitivity": table,
                      "allocation": cfg.allocation, "criterion": cfg.criterion}
    removed = sum(plan.groups[g]["size"] - counts[g] for g in counts)
    total = sum(plan.groups[g]["size"] for g in counts)
    ctx.note(f"structured pruning ({'explicit widths' if cfg.widths else cfg.allocation}, {cfg.criterion}): removed {removed} of {total} channels in "
             f"{len(counts)} groups; skipped {len(plan.skipped)} group(s): "
             + ("; ".join(f"{k} ({v[0]})" for k, v in plan.skipped.items()) or "none")
             + (f"; attention heads {heads}" if heads else ""))
    off_block = off_block_widths(m, plan, counts, cfg)
    if off_block:
        ctx.note(off_block)
    tables = ctx.tables
    tables["Structured pruning: channels kept per group"] = [
        {"group": k, "kept": v} for k, v in per_group.items()] + [
        {"group": f"{k} (attention heads)", "kept": f"{b}/{a}"} for k, (a, b) in heads.items()]
    if plan.skipped:
        tables["Structured pruning: groups left alone"] = [{"group": k, "why": "; ".join(v)}
                                                          for k, v in plan.skipped.items()]
    if table:
        tables["Structured pruning: sensitivity (each group pruned alone, held-in data)"] = table
    return m


# -- transformer and recurrent blocks (torch.export capture) -------------------------------------------------------

def _block_units(m: nn.Module, example, program=None) -> tuple[list, dict]:
    """The block units of ``m`` (a copy: its ``nn.MultiheadAttention`` layers are split in place first);
    ``program``: its ``program_heads`` when already found."""
    split_attention(m)
    return find_units(m, example, program)


def _prune_units(model: nn.Module, m: nn.Module, cfg: StructuredPruneConfig, ctx: Context, example, ref_shape,
                 why_not_channels: str, program=None) -> nn.Module:
    """Attention heads, feed-forward widths and recurrent hidden units (``blocks.py``), pruned at one share in
    every unit set: ``ratio``, or the smallest share that removes ``target_macs`` of the MACs (bisection on
    measured MACs). Heads use ``heads`` when it is set."""

    units, skipped = _block_units(m, example, program)
    if not units:
        raise ConfigError(f"{why_not_channels}; and no attention head, feed-forward width or recurrent unit was "
                          "found to prune either" + (f" ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})"
                                                     if skipped else "") + _program_hint(model))
    names = {u.name for u in units}
    unknown = [k for k in cfg.widths if k not in names]
    if unknown:
        raise ConfigError(f"widths: {', '.join(map(repr, unknown[:3]))} is not a unit set of this model; its prunable "
                          f"parts are block units ({', '.join(sorted(names)[:4])}...)")
    scores = {u.name: u.score(m) for u in units}

    def keep_count(u, r: float) -> int:
        if cfg.widths:  # explicit kept shares (the NAS draws one per unit set); sets not named stay whole
            if u.name not in cfg.widths:
                return u.size
            n = int(round(cfg.widths[u.name] * u.size))
        else:
            share = cfg.heads if (u.kind == "heads" and cfg.heads) else min(r, cfg.max_ratio)
            n = u.size - int(round(share * u.size))
        if u.kind != "heads" and u.size >= 2 * cfg.round_to:
            n = max(cfg.round_to, int(round(n / cfg.round_to)) * cfg.round_to)
        return max(1, min(u.size, n))

    def build(r: float) -> nn.Module:
        out = copy.deepcopy(m)
        for u in units:
            keep = scores[u.name].argsort(descending=True)[:keep_count(u, r)].sort().values
            u.apply(out, keep)
        return out

    one = tuple(t[:1] for t in example)
    notes = []
    if cfg.target_macs:
        base = count_macs(m, one)
        goal = (1 - cfg.target_macs) * base
        lo, hi = 0.0, cfg.max_ratio
        if count_macs(build(hi), one) > goal:
            r = hi
            notes.append(f"target_macs={cfg.target_macs} not reachable by block units at max_ratio={cfg.max_ratio}")
        else:
            for _ in range(10):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if count_macs(build(mid), one) <= goal else (mid, hi)
            r = hi
    else:
        r = cfg.ratio
    if cfg.allocation != "uniform":
        notes.append(f"allocation={cfg.allocation} applies to channel groups; block units use one share")
    if cfg.criterion not in ("l1", "l2", "magnitude"):
        notes.append(f"criterion={cfg.criterion} applies to channel groups; block units are scored by L2 norm")
    if cfg.sparse_epochs:
        notes.append("sparse training applies to channel groups; skipped for block units")
    out = build(r)
    out.zero_grad(set_to_none=True)
    _check_runs(out, example, ref_shape, "a width: exclude that block")
    kept = {u.name: (keep_count(u, r), u.size, u.kind) for u in units}
    out.slimkit_info = {"units": {k: f"{a}/{b} {kind}" for k, (a, b, kind) in kept.items()}, "skipped": skipped,
                        "share": round(r, 4), "graph": "torch.export", "why_not_channels": why_not_channels}
    by_kind: dict = {}
    for a, b, kind in kept.values():
        k0 = by_kind.setdefault(kind, [0, 0])
        k0[0], k0[1] = k0[0] + a, k0[1] + b
    how = "explicit shares per unit set" if cfg.widths else f"share {r:.3f}"
    ctx.note(f"structured pruning of block units (torch.export capture; {why_not_channels[:120]}): {how}; "
             + ", ".join(f"{kind} {a}/{b} kept" for kind, (a, b) in by_kind.items())
             + (f"; left alone: {'; '.join(f'{k} ({v})' for k, v in skipped.items())}" if skipped else "")
             + (f"; {'; '.join(notes)}" if notes else ""))
    for n in notes:
        if "not reachable" in n:
            ctx.warn(n)
    for k, v in skipped.items():
        ctx.warn(f"structured pruning left {k} whole: {v}")
    tables = ctx.tables
    tables["Structured pruning: units kept per block"] = [{"block": k, "kind": kind, "kept": f"{a}/{b}"}
                                                          for k, (a, b, kind) in kept.items()]
    return out
