"""The graph layer shared by every technique family: torch.fx tracing with a one-line error naming what could not
be traced, BatchNorm folding, layer patterns, module replacement, input covariances (calibration statistics)."""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError

PASSTHROUGH_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
PASSTHROUGH_FUNCS = {torch.flatten, F.max_pool1d, F.max_pool2d, F.dropout}
PASSTHROUGH_METHODS = {"view", "reshape", "flatten", "contiguous"}
RELU_MODULES = (nn.ReLU, nn.ReLU6)
RELU_FUNCS = {F.relu, torch.relu, F.relu6}


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:150]
        raise ConfigError(f"cannot trace {type(model).__name__} with torch.fx ({first}); models with data-dependent "
                          "control flow need the ONNX-level techniques (e.g. quantize.int8_dynamic)") from None


def module_of(gm: fx.GraphModule, node: fx.Node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def is_passthrough(gm, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(module_of(gm, node), PASSTHROUGH_MODULES)
    if node.op == "call_function":
        return node.target in PASSTHROUGH_FUNCS
    if node.op == "call_method":
        return node.target in PASSTHROUGH_METHODS
    return False


def is_relu(gm, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(module_of(gm, node), RELU_MODULES)
    return node.op == "call_function" and node.target in RELU_FUNCS


def fold_batchnorm(model: nn.Module) -> tuple[fx.GraphModule, list[str]]:
    """Fold every BatchNorm that directly follows a Conv (and is its only user)
    into that Conv. Returns the traced copy and the names of folded BNs."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    gm = trace(copy.deepcopy(model).eval())
    folded = []
    for node in list(gm.graph.nodes):
        bn = module_of(gm, node)
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        src = node.args[0]
        conv = module_of(gm, src) if isinstance(src, fx.Node) else None
        if not isinstance(conv, (nn.Conv1d, nn.Conv2d)) or len(src.users) != 1:
            continue
        fused = fuse_conv_bn_eval(conv, bn)
        set_module(gm, src.target, fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded.append(node.target)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm, folded


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name``."""
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


@torch.no_grad()
def input_covariances(model: nn.Module, split, names: list[str]) -> dict[str, torch.Tensor]:
    """Sum of x x^T of each named layer's inputs (last dimension) over ``split``, float64:
    the Hessian of a Linear layer's output error (GPTQ) and the whitening of data-aware SVD."""
    cov: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(mod, args, out) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            cov[name] = cov.get(name, 0) + x.T @ x
        return fn

    hooks = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        for x, _ in split.batches(64):
            model(*x)
    finally:
        for h in hooks:
            h.remove()
    return cov
