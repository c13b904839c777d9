"""Once-for-All-style elastic width: one network trained once, from which sub-networks of many widths are taken
without retraining each (Cai et al., "Once-for-All", ICLR 2020; the sandwich rule of Yu et al., "BigNAS", 2020).

The supernet is a copy of the user's model whose channel groups (``prune/channels.py``, the same groups structured
pruning and the NAS slot ``prune.widths`` see) can be narrowed at run time: each group's channels are ranked once
by importance on the original weights (L2, as structured pruning ranks them), and a width keeps the first ``k`` of
that ranking by masking the other channels at the inputs of every layer that reads the group. That is exact:
per-channel layers (BatchNorm, activations) do not mix channels, so the masked network computes what the
physically pruned one computes. Training: every step runs the full network, the narrowest one and
``random_widths`` random ones on the same batch, each distilled from the original model, and sums their
gradients. A sub-network is then cut out by ``prune.structured.apply_keep`` (a real, smaller module of the user's
class) and its BatchNorm statistics re-estimated on training samples (the supernet's running statistics mix every
width it ran at).

As a technique, ``prune.elastic`` is the NAS slot's other way to build a candidate: the planner draws a kept share
per channel group as for ``prune.widths``, and the candidate is cut out of the supernet, trained once per model,
data and settings (kept in the user cache as a state dict, so later trials, resumed studies and other workers on
the machine reuse it) instead of pruned from the teacher and recovered for 10-40 epochs.
``bench/elastic_bench.py`` and ``bench/optimize_bench.py --nas --elastic`` weigh the two routes: docs/BENCHMARKS.md.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from typing import ClassVar

import torch
import torch.nn as nn

from ..core.config import Config, Tunable, check_range
from ..core.context import Context, seed_everything
from ..core.errors import ConfigError
from ..core.io import atomic_path, cache_dir
from ..core.progress import info, track
from ..core.registry import register_technique
from ..distill.losses import kd_loss
from .structured import StructuredPruneConfig, analyse, apply_keep, channel_scores, kept_count, use_index


@dataclasses.dataclass
class ElasticConfig(Config):
    """How the elastic network is trained and which widths it serves."""

    epochs: int = 40
    lr: float = 2e-3
    batch_size: int = 64
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the hard-label loss in each sub-network's KD loss
    min_width: float = 0.25  # the narrowest share of channels a group is trained at
    width_step: float = 0.125  # shares drawn on this grid, as the NAS slot draws them
    random_widths: int = 2  # sandwich rule: the full, the narrowest and this many random sub-networks per step
    round_to: int = 8  # channel counts rounded as structured pruning rounds them
    bn_samples: int = 512  # training samples a cut-out sub-network's BatchNorm statistics are re-estimated on

    def validate(self) -> None:
        check_range("min_width", self.min_width, 0, 1, lo_open=True)
        check_range("width_step", self.width_step, 0, 1, lo_open=True)
        if self.epochs < 0 or self.random_widths < 0 or self.bn_samples < 0 or self.batch_size < 1:
            raise ConfigError("epochs, random_widths and bn_samples must be >= 0, batch_size >= 1")


class Supernet:
    """An elastic copy of ``model`` (never the model itself). ``train`` it once, then ``extract`` sub-networks."""

    def __init__(self, model: nn.Module, example, cfg: ElasticConfig | None = None):
        self.cfg = cfg = cfg or ElasticConfig()
        self.net = copy.deepcopy(model).eval()
        self._prune_cfg = StructuredPruneConfig(round_to=cfg.round_to, max_ratio=1 - cfg.min_width)
        plan = analyse(self.net, example, self._prune_cfg)
        if not plan.groups:
            raise ConfigError(f"no channel group of {type(model).__name__} can be narrowed: an elastic network "
                              "needs prunable channel groups (structured pruning's)")
        self.groups = plan.groups
        self.names = {g: "+".join(v["producers"]) for g, v in self.groups.items()}
        scores = channel_scores(self.net, self.groups, "l2")
        self.order = {g: s.argsort(descending=True) for g, s in scores.items()}
        self._reads: dict[str, list] = {}  # layer -> [(group, input positions of each channel [size, expand])]
        for g, v in self.groups.items():
            for u in v["uses"]:
                if u.role == "in":
                    self._reads.setdefault(u.name, []).append((g, use_index(u, v["size"])))
        self._masks: dict[str, torch.Tensor] = {}
        self._hooks = {n: self.net.get_submodule(n).register_forward_pre_hook(self._mask_hook(n)).id
                       for n in self._reads}

    # -- widths ---------------------------------------------------------------------------------------------

    def counts(self, shares: dict) -> dict:
        """Channels kept per group for shares per group (1.0 where not given)."""
        return {g: kept_count(v["size"] * shares.get(g, 1.0), v["size"], self._prune_cfg)
                for g, v in self.groups.items()}

    def by_name(self, widths: dict) -> dict:
        """Shares keyed by group id from shares keyed by the group names the report and the NAS use."""
        ids = {n: g for g, n in self.names.items()}
        unknown = [k for k in widths if k not in ids]
        if unknown:
            raise ConfigError(f"unknown channel group(s) {', '.join(unknown)}; this model's: {', '.join(ids)}")
        return {ids[k]: v for k, v in widths.items()}

    def set_widths(self, shares: dict) -> None:
        """Narrow the supernet in place (shares keyed by group id)."""
        counts = self.counts(shares)
        for name, reads in self._reads.items():
            mod = self.net.get_submodule(name)
            width = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
            mask = None
            for g, pos in reads:
                k = counts[g]
                if k == self.groups[g]["size"]:
                    continue
                if mask is None:
                    mask = torch.ones(width)
                mask[pos[self.order[g][k:]].reshape(-1)] = 0.0
            if mask is None:
                self._masks.pop(name, None)
            else:
                self._masks[name] = mask

    def _mask_hook(self, name: str):
        def hook(mod, args):
            mask = self._masks.get(name)
            if mask is None:
                return None
            x = args[0]
            shape = [1] * x.dim()
            if isinstance(mod, nn.Linear):
                shape[-1] = -1
            else:
                shape[1] = -1
            return (x * mask.view(shape),) + tuple(args[1:])
        return hook

    def grid(self) -> list[float]:
        n = int(round((1 - self.cfg.min_width) / self.cfg.width_step))
        return [round(self.cfg.min_width + i * self.cfg.width_step, 6) for i in range(n + 1)]

    def sample(self, gen: torch.Generator) -> dict:
        grid = self.grid()
        return {g: grid[int(torch.randint(len(grid), (1,), generator=gen))] for g in self.groups}

    # -- training ----------------------------------------------------------------------------------------------

    def train(self, ctx: Context) -> "Supernet":
        """The sandwich rule for ``cfg.epochs`` on the training split, every sub-network distilled from
        ``ctx.teacher`` (the original)."""
        cfg, data = self.cfg, ctx.data
        if data is None or data.train is None or data.train.targets is None:
            raise ConfigError("elastic training needs labelled training data")
        if ctx.teacher is None:
            raise ConfigError("elastic training distils from the original: the context needs a teacher")
        seed_everything(ctx.seed)
        gen = torch.Generator().manual_seed(ctx.seed)
        train = data.train
        n = len(train)
        with torch.no_grad():
            soft = torch.cat([ctx.teacher.eval()(*x) for x, _ in train.batches(256)])
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=0.0)
        steps = max(1, cfg.epochs * math.ceil(n / cfg.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        full = {g: 1.0 for g in self.groups}
        narrow = {g: cfg.min_width for g in self.groups}
        self.net.train()
        status: dict = {}
        for _ in track(range(cfg.epochs), "elastic training (sandwich rule)", status=status):
            perm = torch.randperm(n, generator=gen)
            total, seen = 0.0, 0
            for i in range(0, n, cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                x = tuple(t[idx] for t in train.inputs)
                y, t = train.targets[idx], soft[idx]
                opt.zero_grad(set_to_none=True)
                for shares in [full, narrow] + [self.sample(gen) for _ in range(cfg.random_widths)]:
                    self.set_widths(shares)
                    loss = kd_loss(self.net(*x), t, y, temperature=cfg.temperature, alpha=cfg.alpha)
                    loss.backward()
                    total += float(loss.detach()) * len(idx)
                opt.step()
                sched.step()
                seen += len(idx)
            status.update(loss=total / max(1, seen) / (2 + cfg.random_widths))
        self.set_widths(full)
        self.net.eval()
        return self

    # -- sub-networks ------------------------------------------------------------------------------------------

    def extract(self, shares: dict, data=None) -> nn.Module:
        """The sub-network at ``shares`` (by group id) as a real smaller module; its BatchNorm statistics
        re-estimated on ``cfg.bn_samples`` training samples of ``data`` when given."""
        counts = self.counts(shares)
        keep = {g: self.order[g][:counts[g]].sort().values for g in self.groups}
        sub = copy.deepcopy(self.net)
        for name, hid in self._hooks.items():  # the copy carries the supernet's mask hooks: a sub-network has none
            sub.get_submodule(name)._forward_pre_hooks.pop(hid, None)
        apply_keep(sub, self.groups, keep)
        bns = [m for m in sub.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if data is not None and data.train is not None and bns and self.cfg.bn_samples:
            split = data.train.slice(0, min(self.cfg.bn_samples, len(data.train)))
            moms = [m.momentum for m in bns]
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the batches below
            sub.train()
            with torch.no_grad():
                for x, _ in split.batches(self.cfg.batch_size):
                    sub(*x)
            for m, mom in zip(bns, moms):
                m.momentum = mom
        sub.eval()
        sub.zero_grad(set_to_none=True)
        return sub


# -- the technique: a candidate of the NAS cut out of a supernet trained once -------------------------------------

@dataclasses.dataclass
class ElasticWidthsConfig(ElasticConfig):
    """A sub-network of the elastic network: ``widths`` maps channel group names (as structured pruning's report
    names them) to the share of channels kept, on the ``width_step`` grid from ``min_width`` to 1; groups not named
    stay whole. The supernet is trained on first use (``epochs`` of the sandwich rule) and cached."""

    #: not in the planner's default space (each model pays one supernet training first); name it: ``--space
    #: prune.elastic``. Its ranges are the model's channel groups (``tunable_for``)
    TUNABLE: ClassVar = None
    WIDTH_STEPS: ClassVar = Tunable(0.25, 1.0, step=0.125)
    SEED_POINTS: ClassVar = ({"widths": 0.5, "finetune.epochs": 0}, {"widths": 0.75, "finetune.epochs": 0})
    widths: dict = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        for k, v in self.widths.items():
            if not isinstance(v, (int, float)) or not self.min_width - 1e-9 <= v <= 1:
                raise ConfigError(f"widths[{k!r}]={v!r}: a share of channels between min_width={self.min_width} "
                                  "and 1")

    @classmethod
    def tunable_for(cls, model: nn.Module, example) -> dict:
        try:
            plan = analyse(copy.deepcopy(model).eval(), example, StructuredPruneConfig())
        except ConfigError:
            return {}
        return {f"widths.{'+'.join(v['producers'])}": cls.WIDTH_STEPS for v in plan.groups.values()}


_TRAINED: dict = {}  # fingerprint -> the supernet's state dict, for the trials of one process


def _fingerprint(model: nn.Module, cfg: ElasticConfig, ctx: Context) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    for t in ctx.data.train.inputs + (ctx.data.train.targets,):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    train = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ElasticConfig)}
    h.update(repr(sorted(train.items())).encode() + str(ctx.seed).encode())
    return h.hexdigest()[:24]


def trained_supernet(model: nn.Module, cfg: ElasticConfig, ctx: Context) -> Supernet:
    """The supernet of ``model`` trained with ``cfg`` on ``ctx``'s training data: from this process's memory, the
    user cache (``elastic/<fingerprint>.pt``, read with ``weights_only``), or trained now and cached."""
    sn = Supernet(model, ctx.example_inputs, cfg)
    fp = _fingerprint(model, cfg, ctx)
    path = cache_dir() / "elastic" / f"{fp}.pt"
    state = _TRAINED.get(fp)
    if state is None and path.exists():
        try:
            state = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable cache entry is trained again, not trusted
            state = None
    if state is None:
        teacher = ctx.teacher if ctx.teacher is not None else copy.deepcopy(model).eval()
        sn.train(dataclasses.replace(ctx, teacher=teacher))
        state = {k: v.detach().clone() for k, v in sn.net.state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    else:
        info(f"slimkit: elastic network {fp} reused (trained once for this model, data and settings)")
        sn.net.load_state_dict(state)
    _TRAINED[fp] = state
    return sn


@register_technique("prune.elastic", ElasticWidthsConfig, needs=("example_inputs", "train_data"),
                    summary="a sub-network cut out of a Once-for-All-style elastic network trained once (sandwich "
                            "rule, KD from the original): NAS candidates without a recovery each")
def elastic_widths(model: nn.Module, cfg: ElasticWidthsConfig, ctx: Context) -> nn.Module:
    sn = trained_supernet(model, cfg, ctx)
    shares = sn.by_name(cfg.widths)
    sub = sn.extract(shares, ctx.data)
    counts = sn.counts(shares)
    kept = {sn.names[g]: f"{counts[g]}/{v['size']}" for g, v in sn.groups.items()}
    ctx.tables["Elastic sub-network: channels kept per group"] = [{"group": k, "kept": v} for k, v in kept.items()]
    ctx.note(f"elastic widths: cut out of a supernet trained once ({cfg.epochs} epochs, sandwich rule); "
             + ", ".join(f"{k} {v}" for k, v in kept.items()))
    return sub
