"""Elastic kernel sizes (NAS): a k x k convolution becomes a smaller (k - 2s) x (k - 2s) one, same channels, same
output shape, initialised from the original's weights.

As in Once-for-All's elastic kernels, the smaller kernel starts as the centre of the larger one (the padding shrinks
by ``s`` times the dilation, so every output position keeps its centre tap). Where calibration data are given the
centre crop is then refitted by least squares: the smaller convolution, fed what the already-shrunk layers before it
give, is fitted to the larger one's output on those samples (every output position a sample, the bias the
intercept). Once-for-All learns a kernel transformation matrix while training the super-network; slimkit has no
super-network to train, so it fits the small kernel directly to the output it replaces, and the stage's
distillation fine-tune recovers the rest.

Only what keeps the output shape is offered: zero padding of at least ``s * dilation`` on each shrunk side,
``padding='same'`` (kept as is), odd or even kernels alike (both sides shrink by ``s``)."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.context import removing
from ..core.errors import ConfigError
from ..core.graph import set_module

#: the least-squares refit's regressor count at most (Cin x k'...); above it the centre crop is kept
MAX_REFIT_FEATURES = 2048


def _spatial(conv: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    pad = conv.padding if not isinstance(conv.padding, str) else (None,) * len(conv.kernel_size)
    return tuple(conv.kernel_size), tuple(pad), tuple(conv.dilation)


def max_steps(conv: nn.Module) -> int:
    """How many steps of 2 the kernel of ``conv`` can shrink while the output keeps its shape (0: none)."""
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d)) or conv.padding_mode != "zeros":
        return 0
    if isinstance(conv.padding, str) and conv.padding != "same":
        return 0  # 'valid': a smaller kernel gives a larger output
    ks, pads, dil = _spatial(conv)
    steps = []
    for k, p, d in zip(ks, pads, dil):
        if k == 1:
            continue
        s = (k - 1) // 2
        if p is not None:
            s = min(s, p // d)
        steps.append(s)
    return min(steps) if steps else 0


def kernel_options(model: nn.Module, example) -> dict[str, int]:
    """{conv name: largest shrink step} for the convolutions of ``model`` that ``example`` runs through."""
    model = copy.deepcopy(model).eval()  # the user's model, its mode and BatchNorm statistics, stay as they are
    ran: list[str] = []
    hooks = [mod.register_forward_hook(lambda mod, a, o, n=n: ran.append(n) if n not in ran else None)
             for n, mod in model.named_modules() if isinstance(mod, (nn.Conv1d, nn.Conv2d))]
    with removing(hooks), torch.no_grad():
        model(*example)
    return {n: s for n in ran if (s := max_steps(model.get_submodule(n))) > 0}


def smaller_conv(conv: nn.Module, step: int) -> nn.Module:
    """``conv`` with its kernel shrunk by ``step`` on each side of every spatial dimension larger than 1: the
    centre of its weights, the padding reduced to keep the output shape."""
    limit = max_steps(conv)
    if not 1 <= step <= limit:
        raise ConfigError(f"a kernel step of {step} is outside 1..{limit} for this {type(conv).__name__} "
                          f"(kernel {tuple(conv.kernel_size)}, padding {conv.padding})")
    ks, pads, dil = _spatial(conv)
    new_k = tuple(k - 2 * step if k > 1 else 1 for k in ks)
    new_p = conv.padding if isinstance(conv.padding, str) else tuple(
        p - step * d if k > 1 else p for k, p, d in zip(ks, pads, dil))
    new = type(conv)(conv.in_channels, conv.out_channels, new_k, stride=conv.stride, padding=new_p,
                     dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                     device=conv.weight.device, dtype=conv.weight.dtype)
    crop = tuple(slice(step, k - step) if k > 1 else slice(None) for k in ks)
    with torch.no_grad():
        new.weight.copy_(conv.weight[(slice(None), slice(None)) + crop])
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    new.train(conv.training)
    return new


def _columns(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """im2col of ``x`` for ``conv``'s geometry: (samples, in_channels * kernel elements)."""
    one_d = isinstance(conv, nn.Conv1d)
    if one_d:
        x = x.unsqueeze(2)
    k = (1, conv.kernel_size[0]) if one_d else conv.kernel_size
    d = (1, conv.dilation[0]) if one_d else conv.dilation
    s = (1, conv.stride[0]) if one_d else conv.stride
    if isinstance(conv.padding, str):  # 'same' at stride 1: pad by hand as torch does (extra on the right)
        tot = [di * (ki - 1) for di, ki in zip(d, k)]
        x = F.pad(x, [tot[1] // 2, tot[1] - tot[1] // 2, tot[0] // 2, tot[0] - tot[0] // 2])
        p = (0, 0)
    else:
        p = (0, conv.padding[0]) if one_d else conv.padding
    cols = F.unfold(x, k, dilation=d, padding=p, stride=s)  # (N, C*K, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _refit(ref: nn.Module, m: nn.Module, name: str, split, samples: int) -> str:
    """Least-squares refit of the shrunk convolution ``name`` of ``m`` to ``ref``'s (unshrunk) output."""
    big, small = ref.get_submodule(name), m.get_submodule(name)
    bias = small.bias is not None
    k = small.weight[0].numel() + bias
    if small.groups != 1 or k > MAX_REFIT_FEATURES:
        return "centre crop (not refitted: " + ("grouped)" if small.groups != 1 else f"{k} regressors)")
    got: dict[str, torch.Tensor] = {}
    hooks = [big.register_forward_hook(lambda mod, a, o: got.__setitem__("y", o.detach())),
             small.register_forward_hook(lambda mod, a, o: got.__setitem__("x", a[0].detach()))]
    gram = torch.zeros(k, k, dtype=torch.float64)
    cross = torch.zeros(small.out_channels, k, dtype=torch.float64)
    yy, err0, seen = 0.0, 0.0, 0
    try:
        with torch.no_grad():
            for x, _ in split.batches(64):
                if seen >= samples:
                    break
                ref(*x)
                m(*x)
                y = got["y"].movedim(1, -1).reshape(-1, small.out_channels).double()
                err0 += float(((small(got["x"]).movedim(1, -1).reshape(-1, small.out_channels).double() - y) ** 2)
                              .sum())
                z = _columns(small, got["x"]).double()
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
    err1 = yy - 2 * float((sol * cross).sum()) + float(((sol @ gram) * sol).sum())
    rel = lambda e: math.sqrt(max(e, 0.0) / max(yy, 1e-30))  # noqa: E731
    if err1 >= err0:
        return f"{rel(err0):.3f} (centre crop kept)"
    with torch.no_grad():
        small.weight.copy_(sol[:, :k - bias].reshape(small.weight.shape).to(small.weight.dtype))
        if bias:
            small.bias.copy_(sol[:, -1].to(small.bias.dtype))
    return f"{rel(err0):.3f} -> {rel(err1):.3f}"


def shrink_kernels(m: nn.Module, steps: dict[str, int], split=None, samples: int = 256) -> list[dict]:
    """Shrink the kernels of ``m`` in place (``steps``: conv name -> shrink step, 0 = as is), in module order;
    with ``split`` each shrunk layer is refitted on it. Returns one report row per shrunk layer."""
    convs = dict(m.named_modules())
    for n, s in steps.items():
        if n not in convs or not isinstance(convs[n], (nn.Conv1d, nn.Conv2d)):
            raise ConfigError(f"kernels names {n!r}, which is not a convolution of this model")
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise ConfigError(f"kernels[{n!r}]={s!r}: a shrink step is a whole number >= 0")
    ref = copy.deepcopy(m).eval() if split is not None else None
    rows = []
    for n in [n for n in convs if steps.get(n, 0) > 0]:
        old = m.get_submodule(n)
        new = smaller_conv(old, steps[n])
        set_module(m, n, new)
        row = {"layer": n, "kernel": f"{'x'.join(map(str, old.kernel_size))} -> {'x'.join(map(str, new.kernel_size))}"}
        if ref is not None:
            row["output error (crop -> refit)"] = _refit(ref, m, n, split, samples)
        rows.append(row)
    return rows
