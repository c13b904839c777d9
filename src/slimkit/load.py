"""Resolve MODEL and DATA specs given on the command line or to the API.

MODEL: ``zoo:NAME`` | ``pkg.module:factory`` | ``FILE.pt2`` (torch.export) |
``DIR`` (local Hugging Face folder) | ``FILE.pt``/``.pth`` (full pickle, only
with ``trust_pickle=True``) | ``FILE.onnx`` (measurement only).
DATA: ``zoo:NAME`` | ``npz:PATH`` | ``folder:PATH`` | ``idx:DIR`` | ``pkg.module:function``.
Nothing is downloaded; nothing is unpickled unless asked.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

from .core.errors import LoadError, ModelError, UnsafeFileError, first_line, user_frame
from .core.checks import check_compatible
from .core.graph import ProgramModule, fixed_batch, modules_from_program
from .core.safeload import load_exported_program, no_unpickling
from .zoo import data as D
from .zoo.registry import ZOO, ZOO_DATA, get_zoo, load_zoo_model, zoo_data


ExportedModule = ProgramModule  # the name earlier releases used


@dataclasses.dataclass
class LoadedModel:
    spec: str
    model: Optional[nn.Module]  # None for an ONNX file
    onnx_path: Optional[Path] = None
    default_data: Optional[str] = None  # data spec to use when none is given

    @property
    def name(self) -> str:
        s = self.spec
        return s.split(":", 1)[1] if s.startswith("zoo:") else Path(s).name if os.sep in s or "." in s else s


def _is_callable_spec(spec: str) -> bool:
    mod, sep, attr = spec.partition(":")
    return bool(sep) and mod.replace(".", "").replace("_", "").isalnum() and attr.isidentifier() and not Path(spec).exists()


def load_model(spec: Union[str, nn.Module], *, data: Optional[D.DataBundle] = None, trust_pickle: bool = False,
               seed: int = 0) -> LoadedModel:
    if isinstance(spec, nn.Module):
        return LoadedModel(type(spec).__name__, spec)
    spec = str(spec)
    if spec.startswith("zoo:"):
        name = spec[4:]
        entry = get_zoo(name)
        model = load_zoo_model(name, data, seed=seed)
        return LoadedModel(spec, model, default_data=f"zoo:{entry.data}" if entry.data else None)
    p = Path(spec)
    if p.suffix == ".onnx":
        if not p.is_file():
            raise LoadError(f"ONNX file not found: {p}")
        check_onnx_file(p)
        return LoadedModel(spec, None, onnx_path=p)
    if p.suffix == ".pt2":
        if not p.is_file():
            raise LoadError(f"model file not found: {p}")
        ep = load_exported_program(p, trust_pickle=trust_pickle)
        batch = fixed_batch(ep)
        if batch is not None:
            raise LoadError(f"{p} was exported with a fixed batch of {batch}: its reshapes hold that size, so it "
                            "cannot run other batches; export it again with a dynamic batch: torch.export.export("
                            "model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))")
        # its layers as real modules again, so that every technique can reach them
        return LoadedModel(spec, ProgramModule(modules_from_program(ep.module())))
    if p.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        if not p.is_file():
            raise LoadError(f"model file not found: {p}")
        if p.stat().st_size == 0:
            raise LoadError(f"{p} is empty; save the model again")
        if not trust_pickle:
            try:
                with no_unpickling():
                    obj = torch.load(p, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
                if "Weights only load failed" in str(e) or "weights_only" in str(e):
                    raise UnsafeFileError(f"{p} is a full pickle that could run code when loaded; if you trust it, "
                                          "pass --trust-pickle (or save a torch.export .pt2 instead)") from None
                raise LoadError(f"{p} is not a readable PyTorch file ({first_line(e, 100)})") from None
            if isinstance(obj, nn.Module):  # pragma: no cover - weights_only never returns modules
                return LoadedModel(spec, obj)
            raise LoadError(f"{p} holds a state dict, not a model; load it with a factory: pkg.module:factory "
                            "that builds the architecture and calls load_state_dict")
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise LoadError(f"{p} could not be unpickled ({type(e).__name__}: {first_line(e, 100)})") from None
        if not isinstance(obj, nn.Module):
            raise LoadError(f"{p} unpickled to {type(obj).__name__}, not an nn.Module")
        return LoadedModel(spec, obj.eval())
    if p.is_dir():
        from .zoo.minilm import load_hf_folder

        return LoadedModel(spec, load_hf_folder(p), default_data=f"hf-sentences:{p}")
    if _is_callable_spec(spec):
        mod_name, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(mod_name), attr)
        except Exception as e:  # noqa: BLE001 - ImportError, AttributeError, or the module's own code raising
            raise LoadError(f"cannot import model factory {spec!r}: {type(e).__name__}: {first_line(e)}") from None
        if isinstance(fn, nn.Module):
            model = fn
        elif callable(fn):
            try:
                model = fn()
            except Exception as e:  # noqa: BLE001 - the user's factory raised
                raise ModelError(f"model factory {spec} raised {type(e).__name__}: {first_line(e)}"
                                 f"{user_frame(e)}") from None
        else:
            model = fn
        if not isinstance(model, nn.Module):
            raise LoadError(f"{spec} returned {type(model).__name__}, not an nn.Module")
        return LoadedModel(spec, model.eval())
    if not p.exists() and (p.suffix or os.sep in spec):
        raise LoadError(f"model file not found: {p}")
    raise LoadError(f"cannot interpret MODEL {spec!r}; use zoo:NAME ({', '.join(ZOO)}), pkg.module:factory, "
                    "FILE.pt2, FILE.onnx or a Hugging Face folder")


def load_data(spec: Optional[str], *, model: Optional[LoadedModel] = None) -> D.DataBundle:
    if isinstance(spec, D.DataBundle):
        return spec
    if spec is None:
        if model is not None and model.default_data:
            spec = model.default_data
        else:
            raise LoadError("no DATA given; pass --data zoo:NAME, npz:FILE, folder:DIR, idx:DIR or pkg.module:function")
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise LoadError(f"bad DATA spec {spec!r}; use zoo:NAME, npz:FILE, folder:DIR, idx:DIR or pkg.module:function")
    if kind == "zoo":
        if rest not in ZOO_DATA and rest not in ZOO:
            raise LoadError(f"unknown zoo data set {rest!r}; known: {', '.join(ZOO_DATA)}")
        return zoo_data(rest, model.model if model else None)
    if kind == "hf-sentences":
        return D.sentences(rest)
    if kind == "npz":
        return D.from_npz(rest)
    if kind == "folder":
        path, _, q = rest.partition("?size=")
        if q and not (q.isdigit() and 1 <= int(q) <= 4096):
            raise LoadError(f"folder:{path}?size={q}: size must be a whole number of pixels from 1 to 4096")
        return D.from_folder(path, int(q) if q else None)
    if kind == "idx":
        return D.from_idx(rest)
    if _is_callable_spec(spec):
        return D.from_callable(spec)
    raise LoadError(f"bad DATA spec {spec!r}; use zoo:NAME, npz:FILE, folder:DIR, idx:DIR or pkg.module:function")


def check_onnx_file(p: Path) -> None:
    """An ONNX file that ONNX Runtime can load, or one clear line saying why not."""
    if p.stat().st_size == 0:
        raise LoadError(f"{p} is empty; export the model again")
    try:
        import onnx

        onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors come in many types
        raise LoadError(f"{p} is not a valid ONNX file ({type(e).__name__}: {first_line(e, 100)}); export it "
                        "again") from None
    try:
        from .export.onnx import ort_session

        ort_session(p, optimize=False)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's own exception types
        raise LoadError(f"ONNX Runtime cannot load {p} ({first_line(e, 160)}); export it again with a "
                        "supported opset and standard operators") from None


def resolve(model_spec, data_spec=None, *, trust_pickle=False, seed=0) -> tuple[LoadedModel, D.DataBundle]:
    """Load MODEL and DATA and check they fit together. For zoo architectures
    without built-in data, DATA is loaded first and the model trained on it."""
    if isinstance(model_spec, str) and model_spec.startswith("zoo:") and data_spec is not None:
        entry = get_zoo(model_spec[4:])
        if entry.data is None:
            data = load_data(data_spec)
            lm = load_model(model_spec, data=data, trust_pickle=trust_pickle, seed=seed)
            check_compatible(lm.model, data)
            return lm, data
    lm = load_model(model_spec, trust_pickle=trust_pickle, seed=seed)
    data = load_data(data_spec, model=lm)
    if lm.model is not None:
        check_compatible(lm.model, data)
    return lm, data
