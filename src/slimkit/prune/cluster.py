"""Weight sharing: k-means clustering of each layer's (or each output
channel's) weights to 2^b shared values (Han et al., Deep Compression, 2016).

Pruned zeros stay zero and are not clustered, so a pruned-then-clustered
tensor holds 2^b distinct non-zero values plus 0. During fine-tuning the
centroids are the trainable parameters: every weight reads its centroid, so
the gradient of a centroid is the sum of its weights' gradients (exactly the
Deep Compression update), and the assignment never changes. ``.slim`` files
store such tensors as b-bit indices into the codebook."""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as P

from ..core.config import Config, check_choice
from ..core.context import Context
from ..core.errors import ConfigError
from ..core.registry import register_technique
from ..core.targets import Targets
from .unstructured import PrunedModel, weight_layers


@dataclasses.dataclass
class ClusterConfig(Config):
    """Cluster each targeted weight tensor to ``2**bits`` shared values."""

    bits: int = 4
    per: str = "layer"  # layer | channel (one codebook per output channel)
    init: str = "linear"  # linear (Han et al.'s best) | density (quantiles)
    iters: int = 30
    targets: Targets = dataclasses.field(default_factory=lambda: Targets(types=["Linear", "Conv1d", "Conv2d"]))

    def validate(self) -> None:
        if not 2 <= int(self.bits) <= 8 or int(self.bits) != self.bits:
            raise ConfigError(f"bits={self.bits}: clustering supports 2 to 8 bits (4 to 256 shared values)")
        check_choice("per", self.per, ("layer", "channel"))
        check_choice("init", self.init, ("linear", "density"))
        if self.iters < 1:
            raise ConfigError("iters must be >= 1")
        if isinstance(self.targets, (dict, list, str)):
            self.targets = Targets.from_dict(self.targets)


def kmeans_1d(values: torch.Tensor, k: int, iters: int = 30, init: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``values`` [R, N] clustered independently to ``k`` centroids each.
    Returns (centroids [R, k] sorted, assignment [R, N] int64). Exact 1-D Lloyd
    iterations: assignment by binary search between sorted centroids."""
    v = values.detach().double()
    r, n = v.shape
    if n < k:
        raise ConfigError(f"cannot make {k} clusters from {n} weights; use fewer bits")
    lo, hi = v.min(1, keepdim=True).values, v.max(1, keepdim=True).values
    if init == "linear":
        c = lo + (hi - lo) * torch.linspace(0, 1, k, dtype=v.dtype)[None]
    else:
        c = torch.quantile(v, torch.linspace(0, 1, k, dtype=v.dtype), dim=1).T.contiguous()
    for _ in range(iters):
        c = c.sort(1).values
        mid = (c[:, 1:] + c[:, :-1]) / 2
        a = torch.searchsorted(mid.contiguous(), v.contiguous())
        sums = torch.zeros(r, k, dtype=v.dtype).scatter_add_(1, a, v)
        cnt = torch.zeros(r, k, dtype=v.dtype).scatter_add_(1, a, torch.ones_like(v))
        new = torch.where(cnt > 0, sums / cnt.clamp_min(1), c)
        # an empty cluster takes over the value farthest from its centroid, so all k stay in use
        empty = (cnt == 0)
        if empty.any():
            err = (v - torch.gather(new, 1, a)).abs()
            for row in empty.any(1).nonzero().reshape(-1).tolist():
                for j in empty[row].nonzero().reshape(-1).tolist():
                    far = int(err[row].argmax())
                    new[row, j] = v[row, far]
                    err[row, far] = -1
        if torch.allclose(new, c):
            c = new
            break
        c = new
    c = c.sort(1).values
    mid = (c[:, 1:] + c[:, :-1]) / 2
    a = torch.searchsorted(mid.contiguous(), v.contiguous())
    return c.float(), a


class SharedWeights(nn.Module):
    """A parametrization: weight = centroids[assignment] (zeros kept where pruned)."""

    def __init__(self, weight: torch.Tensor, bits: int, per: str, iters: int, init: str):
        super().__init__()
        w = weight.detach()
        rows = w.reshape(w.shape[0], -1) if per == "channel" else w.reshape(1, -1)
        mask = rows != 0
        k = 2 ** bits
        cents, assign = [], torch.zeros(rows.shape, dtype=torch.long)
        for i in range(rows.shape[0]):  # rows have different non-zero counts after pruning
            nz = rows[i][mask[i]]
            if nz.numel() == 0:
                cents.append(torch.zeros(k))
                continue
            kk = min(k, int(nz.unique().numel()))
            c, a = kmeans_1d(nz[None], kk, iters, init)
            cents.append(torch.cat([c[0], c[0, -1:].expand(k - kk)]))
            assign[i][mask[i]] = a[0]
        self.shape = tuple(w.shape)
        self.centroids = nn.Parameter(torch.stack(cents))
        self.register_buffer("assign", assign)
        self.register_buffer("mask", mask)

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        w = torch.gather(self.centroids, 1, self.assign) * self.mask
        return w.reshape(self.shape)


class ClusteredModel(PrunedModel):
    """The clustered model; fine-tuning trains the centroids, ``slimkit_finalize``
    writes the shared values into plain weights."""


@register_technique("prune.cluster", ClusterConfig, needs=(),
                    summary="weight sharing: k-means to 2^b values per layer or channel; centroids fine-tuned")
def cluster(model: nn.Module, cfg: ClusterConfig, ctx: Context) -> ClusteredModel:
    """Cluster weights; pruned zeros stay zero. A following fine-tune trains the centroids."""
    m = copy.deepcopy(model)
    layers = weight_layers(m, cfg.targets, "cluster")
    info = {}
    for name, mod in layers:
        if mod.weight.numel() < 2 ** cfg.bits:
            info[name] = "skipped: fewer weights than clusters"
            continue
        P.register_parametrization(mod, "weight", SharedWeights(mod.weight, cfg.bits, cfg.per, cfg.iters, cfg.init),
                                   unsafe=True)
        mod.parametrizations.weight.original.requires_grad_(False)
        info[name] = f"{2 ** cfg.bits} values" + (" per channel" if cfg.per == "channel" else "")
    ctx.note(f"clustered {sum(v.endswith('values') or 'per channel' in v for v in info.values())} layer(s) to "
             f"{2 ** cfg.bits} shared values ({cfg.per}); zeros kept; centroids train during fine-tuning")
    return ClusteredModel(m, {"clusters": info, "bits": cfg.bits})
