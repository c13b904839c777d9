"""Low-rank factorization and depthwise-separable conversion as techniques.

Rank selection (``rank``):
* ``energy``: per layer, the smallest rank keeping ``energy`` of the squared singular values;
* ``ratio``: per layer, ``ratio`` of the full rank; ``ranks`` pins ranks per layer name;
* ``auto``: a global budget (``target`` share of MACs or params removed): every layer is
  factorized alone at several ranks on held-in data, the metric drop and the saving are
  measured, and a greedy search (``evaluate.sensitivity``, in the spirit of AIMET's greedy
  rank selection) takes the cheapest steps until the measured saving meets the target.

A layer is only replaced when the factorized form measures fewer MACs and params than
the original (``min_saving``); the others are listed as skipped with the reason. The
result is the user's model with ``Factorized`` pieces in place of the chosen layers (drop-in: they keep the
replaced layer's attributes and give its dense weight);
recovery (``finetune: {method: kd}``) follows in the recipe stage."""
from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar
import math

import torch
import torch.nn as nn

from ..core.config import Config, check_choice, check_range, Tunable
from ..core.context import Context
from ..core.errors import ConfigError
from ..core.registry import register_technique
from ..core.rewrite import split_attention
from ..core.targets import Targets
from ..evaluate.macs import count_macs, count_params
from ..evaluate.sensitivity import DropMeter, Step, measure
from ..core.graph import input_covariances, set_module
from .decompose import (depthwise_separable, linear_rank_limit, rank_for_energy, singular_values,
                        spatial_rank_limit, spatial_svd_conv, svd_linear, tucker2_conv, tucker_rank_limits)

LEVELS = (0.75, 0.625, 0.5, 0.375, 0.25, 0.125)  # share of the full rank kept, mildest first


@dataclasses.dataclass
class LowRankConfig(Config):
    """Factorize Linear layers by truncated SVD and convolutions by Tucker-2 or spatial SVD."""

    TUNABLE: ClassVar = {"rank": Tunable(choices=("auto",)), "target": Tunable(0.2, 0.7, step=0.05)}

    linear: str = "svd"  # svd | none
    conv: str = "tucker"  # tucker | spatial | none
    rank: str = "energy"  # energy | ratio | auto
    energy: float = 0.9
    ratio: float = 0.5
    ranks: dict = dataclasses.field(default_factory=dict)  # layer name -> rank (Tucker: the same share on both modes)
    target: float = 0.4  # auto: share of `budget` to remove from the whole model
    budget: str = "macs"  # macs | params
    round_to: int = 8
    min_saving: float = 0.1  # replace a layer only if its MACs and params drop by at least this share
    data_aware: bool = True  # Linear: whitened SVD that minimises the output error on calibration data
    eval_samples: int = 512
    targets: Targets = dataclasses.field(default_factory=lambda: Targets(types=["Linear", "Conv1d", "Conv2d"]))

    def validate(self) -> None:
        check_choice("linear", self.linear, ("svd", "none"))
        check_choice("conv", self.conv, ("tucker", "spatial", "none"))
        check_choice("rank", self.rank, ("energy", "ratio", "auto"))
        check_choice("budget", self.budget, ("macs", "params"))
        check_range("energy", self.energy, 0, 1, lo_open=True)
        check_range("ratio", self.ratio, 0, 1, lo_open=True)
        check_range("target", self.target, 0, 1, lo_open=True, hi_open=True)
        check_range("min_saving", self.min_saving, 0, 1, hi_open=True)
        for k, v in dict(self.ranks).items():
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"ranks[{k!r}]={v!r}: a rank is a whole number >= 1")
        if self.round_to < 1:
            raise ConfigError("round_to must be >= 1")
        if isinstance(self.targets, (dict, list, str)):
            self.targets = Targets.from_dict(self.targets)


def _round_rank(r: float, full: int, round_to: int) -> int:
    r = max(1, int(math.ceil(r)))
    if round_to > 1 and r >= round_to:
        r = int(math.ceil(r / round_to)) * round_to
    return min(full, r)


def _full_rank(mod: nn.Module, cfg: LowRankConfig) -> int:
    if isinstance(mod, nn.Linear):
        return linear_rank_limit(mod)
    if cfg.conv == "spatial":
        return spatial_rank_limit(mod)
    return max(tucker_rank_limits(mod))


def _factorize(mod: nn.Module, share: float, cfg: LowRankConfig, rank: int | None = None,
               cov: torch.Tensor | None = None) -> nn.Module:
    """The layer factorized keeping ``share`` of its full rank (or exactly ``rank``)."""
    if isinstance(mod, nn.Linear):
        full = linear_rank_limit(mod)
        return svd_linear(mod, rank or _round_rank(share * full, full, cfg.round_to), cov)
    if cfg.conv == "spatial":
        full = spatial_rank_limit(mod)
        return spatial_svd_conv(mod, rank or _round_rank(share * full, full, cfg.round_to))
    o, i = tucker_rank_limits(mod)
    if rank:
        return tucker2_conv(mod, min(rank, o), min(rank, i))
    return tucker2_conv(mod, _round_rank(share * o, o, cfg.round_to), _round_rank(share * i, i, cfg.round_to))


def _energy_share(mod: nn.Module, cfg: LowRankConfig) -> float:
    if isinstance(mod, nn.Linear) or cfg.conv == "tucker":
        s = singular_values(mod)
        return rank_for_energy(s, cfg.energy) / len(s)
    w = mod.weight.detach().double()
    o, i, kh, kw = w.shape
    s = torch.linalg.svdvals(w.permute(1, 2, 0, 3).reshape(i * kh, o * kw))
    return rank_for_energy(s, cfg.energy) / len(s)


class _Shapes:
    """Input shapes of each layer on the example inputs, to measure one layer's MACs."""

    def __init__(self, model: nn.Module, example, names: list[str]):
        self.shapes: dict[str, tuple] = {}

        def hook(name):
            def fn(mod, args, out) -> None:  # must return None: a value would replace the output
                self.shapes.setdefault(name, tuple(args[0].shape))
            return fn

        hooks = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
        with torch.no_grad():
            model(*example)
        for h in hooks:
            h.remove()

    def cost(self, name: str, mod: nn.Module) -> tuple[int, int]:
        return count_macs(mod, (torch.zeros(self.shapes[name]),)), count_params(mod)


def _candidates(m: nn.Module, cfg: LowRankConfig) -> list[tuple[str, nn.Module]]:
    out = []
    for n, mod in cfg.targets.select(m):
        if isinstance(mod, nn.Linear) and cfg.linear == "svd":
            out.append((n, mod))
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d)) and cfg.conv != "none" and mod.groups == 1:
            if cfg.conv == "spatial" and (not isinstance(mod, nn.Conv2d) or 1 in mod.kernel_size):
                continue
            out.append((n, mod))
    return out


@register_technique("factorize.lowrank", LowRankConfig, needs=("example_inputs",),
                    summary="low-rank factorization: SVD for Linear, Tucker-2 or spatial SVD for Conv; ranks by "
                            "energy, ratio, per-layer pins or a greedy global budget")
def lowrank(model: nn.Module, cfg: LowRankConfig, ctx: Context) -> nn.Module:
    """Replace layers by low-rank products where that measures cheaper."""
    m = copy.deepcopy(model).eval()
    # nn.MultiheadAttention reads its packed projection directly: as four Linear layers they can be factorized
    # (as they are when the same model comes as a .pt2 program, whose packed projection is a Linear)
    split_attention(m)
    example = ctx.example_inputs
    layers = _candidates(m, cfg)
    if not layers:
        raise ConfigError("no Linear/Conv layer matched the targets and the chosen decompositions")
    shapes = _Shapes(m, example, [n for n, _ in layers])
    layers = [(n, mod) for n, mod in layers if n in shapes.shapes]
    base = {n: shapes.cost(n, mod) for n, mod in layers}
    covs = {}
    if cfg.data_aware and ctx.has("calibration_data"):
        covs = input_covariances(m, ctx.data.calib, [n for n, mod in layers if isinstance(mod, nn.Linear)])
    skipped, plan, table = {}, {}, []

    def pays_off(n, new):
        macs, params = shapes.cost(n, new)
        return macs <= (1 - cfg.min_saving) * base[n][0] and params <= (1 - cfg.min_saving) * base[n][1]

    if cfg.rank == "auto":
        if not ctx.has("train_data"):
            raise ConfigError("rank: auto measures each layer on held-in data: it needs training data")
        plan, table = _auto(m, layers, cfg, ctx, example, shapes, base, pays_off, covs)
    else:
        for n, mod in layers:
            if n in cfg.ranks:
                if cfg.ranks[n] > _full_rank(mod, cfg):
                    raise ConfigError(f"rank {cfg.ranks[n]} for {n} is larger than its full rank {_full_rank(mod, cfg)}")
                new = _factorize(mod, 1.0, cfg, rank=cfg.ranks[n], cov=covs.get(n))
            else:
                share = cfg.ratio if cfg.rank == "ratio" else _energy_share(mod, cfg)
                new = _factorize(mod, share, cfg, cov=covs.get(n))
            if pays_off(n, new):
                plan[n] = new
            else:
                skipped[n] = "the factorized form would not be cheaper at this rank"
    for n, new in plan.items():
        set_module(m, n, new)
    for n, _ in layers:
        if n not in plan and n not in skipped:
            skipped[n] = "left as is by the budget search"
    for n in cfg.ranks:
        if n not in base:
            raise ConfigError(f"ranks names {n!r}, which is not a factorizable layer of this model")
    rows = []
    for n, new in plan.items():
        macs, params = shapes.cost(n, new)
        ranks = [(s.out_features if isinstance(s, nn.Linear) else s.out_channels) for s in list(new)[:-1]]
        rows.append({"layer": n, "ranks": "x".join(map(str, ranks)), "macs": f"{base[n][0]:,} -> {macs:,}",
                     "params": f"{base[n][1]:,} -> {params:,}"})
    tables = ctx.tables
    tables["Low-rank factorization: layers replaced"] = rows
    if skipped:
        tables["Low-rank factorization: layers left alone"] = [{"layer": k, "why": v} for k, v in skipped.items()]
    if table:
        tables["Low-rank factorization: sensitivity (each layer alone, held-in data)"] = table
    ctx.note(f"low-rank ({cfg.rank}{', data-aware SVD' if covs else ''}): factorized {len(plan)} of {len(layers)} layer(s); params "
             f"{count_params(model):,} -> {count_params(m):,}")
    return m


def _auto(m, layers, cfg, ctx, example, shapes, base, pays_off, covs):
    """Each layer factorized alone at LEVELS (``evaluate.sensitivity``), then the greedy budget search."""
    meter = DropMeter(m, ctx.data, cfg.eval_samples, ctx.seed)
    idx = 0 if cfg.budget == "macs" else 1
    total = count_macs(m, example) if idx == 0 else count_params(m)
    mods = dict(layers)

    def probe(n, share):
        mod = mods[n]
        new = _factorize(mod, share, cfg, cov=covs.get(n))
        if not pays_off(n, new):
            return None  # not cheaper at this rank: the level stays the previous one
        set_module(m, n, new)
        drop = meter(m)[0]
        set_module(m, n, mod)
        saved = (base[n][idx] - shapes.cost(n, new)[idx]) / total
        return Step(drop, saved, {"layer": n, "rank_share": share, "drop": round(drop, 5), "saved": round(saved, 4)},
                    option=new)

    sens = measure(mods, LEVELS, probe, "low-rank sensitivity (one layer at a time)")

    def achieved(level):
        for n, mod in layers:
            set_module(m, n, sens.options[n][level[n]] or mod)
        got = 1 - (count_macs(m, example) if idx == 0 else count_params(m)) / total
        for n, mod in layers:
            set_module(m, n, mod)
        return got

    level = sens.allocate(cfg.target, achieved, f"the {cfg.budget} target {cfg.target} cannot be met by "
                          "factorization (reached {got:.1%}); lower the target or add layer types")
    return {n: sens.options[n][level[n]] for n, _ in layers if level[n]}, sens.table


@dataclasses.dataclass
class DSConvConfig(Config):
    """Replace k x k convolutions by depthwise k x k + pointwise 1 x 1."""

    TUNABLE: ClassVar = {}

    multiplier: int = 1  # depthwise channels per input channel (rank of the per-channel fit)
    # refit each pointwise 1x1 (and its bias) by least squares on calibration data: the converted layer's output,
    # fed what the already-converted layers before it give, is fitted to the original layer's output
    data_aware: bool = True
    refit_samples: int = 256
    min_in_channels: int = 4  # a 1- or 3-channel input conv gains little and loses much
    min_saving: float = 0.1
    targets: Targets = dataclasses.field(default_factory=lambda: Targets(types=["Conv1d", "Conv2d"]))

    def validate(self) -> None:
        if self.multiplier < 1 or self.min_in_channels < 1:
            raise ConfigError("multiplier and min_in_channels must be >= 1")
        if self.refit_samples < 1:
            raise ConfigError(f"refit_samples must be >= 1 (got {self.refit_samples})")
        check_range("min_saving", self.min_saving, 0, 1, hi_open=True)
        if isinstance(self.targets, (dict, list, str)):
            self.targets = Targets.from_dict(self.targets)


@register_technique("factorize.dsconv", DSConvConfig, needs=("example_inputs",),
                    summary="depthwise-separable conversion of k x k convolutions, least-squares initialised")
def dsconv(model: nn.Module, cfg: DSConvConfig, ctx: Context) -> nn.Module:
    m = copy.deepcopy(model).eval()
    convs = [(n, c) for n, c in cfg.targets.select(m) if isinstance(c, (nn.Conv1d, nn.Conv2d))]
    if not convs:
        raise ConfigError("no convolution matched the targets; nothing to convert")
    shapes = _Shapes(m, ctx.example_inputs, [n for n, _ in convs])
    rows, skipped = [], {}
    for n, c in convs:
        if n not in shapes.shapes:
            skipped[n] = "not run on the example inputs"
        elif c.groups != 1:
            skipped[n] = f"already grouped (groups={c.groups})"
        elif max(c.kernel_size) == 1:
            skipped[n] = "1x1 convolution"
        elif c.in_channels < cfg.min_in_channels:
            skipped[n] = f"only {c.in_channels} input channel(s) (min_in_channels={cfg.min_in_channels})"
        else:
            new = depthwise_separable(c, min(cfg.multiplier, c.out_channels, math.prod(c.kernel_size)))
            (m0, p0), (m1, p1) = shapes.cost(n, c), shapes.cost(n, new)
            if m1 > (1 - cfg.min_saving) * m0:
                skipped[n] = "the separable form would not be cheaper"
                continue
            set_module(m, n, new)
            rows.append({"layer": n, "macs": f"{m0:,} -> {m1:,}", "params": f"{p0:,} -> {p1:,}"})
    if not rows:
        raise ConfigError("no convolution could be converted: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    refit = cfg.data_aware and ctx.has("calibration_data")
    if refit:
        ref = copy.deepcopy(model).eval()
        for r in rows:
            r["output error (weight fit -> refit)"] = _refit_pointwise(ref, m, r["layer"], ctx.data.calib,
                                                                       cfg.refit_samples)
    tables = ctx.tables
    tables["Depthwise-separable conversion"] = rows
    if skipped:
        tables["Depthwise-separable conversion: left alone"] = [{"layer": k, "why": v} for k, v in skipped.items()]
    ctx.note(f"depthwise-separable{' (pointwise refit on calibration data)' if refit else ''}: converted "
             f"{len(rows)} convolution(s); params {count_params(model):,} -> "
             f"{count_params(m):,}")
    return m


def _refit_pointwise(ref: nn.Module, m: nn.Module, name: str, split, samples: int) -> str:
    """Least-squares refit of the pointwise half of the converted layer ``name`` of ``m``.

    Targets: the original layer's outputs in ``ref`` (the unconverted model); regressors: the depthwise outputs in
    ``m``, whose earlier layers are already converted and refitted, so each fit also absorbs the error upstream.
    Every output pixel is a sample; the bias, where the layer has one, is the intercept. Returns the relative
    output error before and after, on the fitted samples."""
    orig, new = ref.get_submodule(name), m.get_submodule(name)
    dw, pw = new[0], new[1]
    got: dict[str, torch.Tensor] = {}

    def keep(key):
        def fn(mod, args, out) -> None:
            got[key] = out.detach()
        return fn

    hooks = [orig.register_forward_hook(keep("y")), dw.register_forward_hook(keep("z"))]
    bias = pw.bias is not None
    k = pw.in_channels + bias
    gram = torch.zeros(k, k, dtype=torch.float64)
    cross = torch.zeros(pw.out_channels, k, dtype=torch.float64)
    yy, err0, seen = 0.0, 0.0, 0
    try:
        with torch.no_grad():
            for x, _ in split.batches(64):
                if seen >= samples:
                    break
                ref(*x)
                m(*x)
                z = got["z"].movedim(1, -1).reshape(-1, pw.in_channels).double()
                y = got["y"].movedim(1, -1).reshape(-1, pw.out_channels).double()
                err0 += float(((pw(got["z"]).movedim(1, -1).reshape(-1, pw.out_channels).double() - y) ** 2).sum())
                if bias:
                    z = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)
                gram += z.T @ z
                cross += y.T @ z
                yy += float((y ** 2).sum())
                seen += len(x[0])
    finally:
        for h in hooks:
            h.remove()
    ridge = 1e-6 * float(gram.diagonal().mean()) + 1e-12
    sol = torch.linalg.solve(gram + ridge * torch.eye(k, dtype=gram.dtype), cross.T).T
    # residual of the least-squares fit: |y|^2 - 2 tr(P C^T) + tr(P G P^T)
    err1 = yy - 2 * float((sol * cross).sum()) + float(((sol @ gram) * sol).sum())
    if err1 >= err0:  # the weight-space fit is kept where the refit is no better (it cannot be, up to rounding)
        return f"{math.sqrt(err0 / max(yy, 1e-30)):.3f} (kept)"
    with torch.no_grad():
        pw.weight.copy_(sol[:, :pw.in_channels].reshape(pw.weight.shape).float())
        if bias:
            pw.bias.copy_(sol[:, -1].float())
    return f"{math.sqrt(err0 / max(yy, 1e-30)):.3f} -> {math.sqrt(max(err1, 0) / max(yy, 1e-30)):.3f}"
