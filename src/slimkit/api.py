"""One-call Python API per technique family::

    import slimkit
    q = slimkit.quantize(model, slimkit.quantize.StaticQuantConfig(), data)     # or a dict with "type"
    p = slimkit.prune(model, {"type": "prune.structured", "target_macs": 0.5}, "zoo:digits")
    f = slimkit.factorize(model, {"type": "factorize.lowrank", "rank": "energy"}, data)
    s = slimkit.distill(student, {"type": "distill.train", "epochs": 10}, data, teacher=model)

``config`` is a technique's Config instance (the technique is found by its class), a
dict with ``type`` plus fields, or a technique name (defaults). ``data`` is a DataBundle
or a DATA spec string (``zoo:digits``, ``npz:FILE``, ...). ``slimkit.quantize`` is both the
package and this call: the family packages are callable modules (see ``slimkit.core.family``). The user's model is never
modified; the result is what the technique returns (call ``slimkit_finalize()`` on it,
if it has one, once any fine-tuning is done, or use ``slimkit.compress`` for the whole
recipe, recovery and export run)."""
from __future__ import annotations

import copy
from typing import Any

import torch.nn as nn

from .core.config import Config
from .core.context import Context, preserve_mode
from .core.errors import ConfigError
from .core.registry import Technique, get_technique, list_techniques


def _technique(family: str, config: Any) -> tuple[Technique, Config]:
    if isinstance(config, str):
        tech = get_technique(config)
        cfg = tech.config_cls()
    elif isinstance(config, dict):
        if "type" not in config:
            raise ConfigError(f"a {family} config dict needs a 'type' (one of: "
                              f"{', '.join(t.name for t in list_techniques() if t.family == family)})")
        d = dict(config)
        tech = get_technique(d.pop("type"))
        cfg = tech.config_cls.from_dict(d)
    elif isinstance(config, Config):
        hits = [t for t in list_techniques() if type(config) is t.config_cls]
        if len(hits) != 1:
            raise ConfigError(f"{type(config).__name__} belongs to {len(hits)} techniques; pass a dict with 'type'")
        tech, cfg = hits[0], config
    else:
        raise ConfigError(f"config must be a Config, a dict with 'type' or a technique name, not {type(config).__name__}")
    if tech.family != family:
        raise ConfigError(f"{tech.name} is a {tech.family} technique; call slimkit.{tech.family}(...) for it")
    return tech, cfg


def run_family(family: str, model: nn.Module, config: Any, data=None, *, teacher: nn.Module | None = None,
               seed: int = 0) -> nn.Module:
    from .load import load_data

    tech, cfg = _technique(family, config)
    bundle = load_data(data) if isinstance(data, str) else data
    ctx = Context(data=bundle, teacher=teacher if teacher is not None else copy.deepcopy(model).eval(), seed=seed)
    missing = [n for n in tech.needs if not ctx.has(n)]
    if missing:
        raise ConfigError(f"{tech.name} needs {', '.join(missing)}: pass data (and a teacher where asked)")
    with preserve_mode(model):  # the user's model is never modified, its train/eval mode included
        return tech.apply(model, cfg, ctx)
