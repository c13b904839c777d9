"""Loading model files without running code from them.

``torch.export.load`` unpickles parts of a ``.pt2`` archive with ``weights_only=False``: the sample inputs (it
tries the safe loader first and silently falls back), weights and constants marked ``use_pickle``, custom and
opaque objects (``pickle.loads``), and every ``.pt`` entry of the pre-2.7 archive layout. An unpickler runs
whatever the file tells it to, so slimkit does two things, in this order, unless the user passes
``--trust-pickle``:

1. **inspect** the archive (read once into memory, so the file cannot change between the check and the load)
   and refuse it, naming the entry, when anything in it needs the unsafe unpickler;
2. **load under a guard** in which ``torch.load`` is forced to ``weights_only=True`` and ``pickle.loads`` /
   ``torch._C._pickle_load_obj`` refuse: a layout the inspection does not know still cannot run code.

torch's own logging of a rejected archive (a dozen lines) is silenced; the caller turns the failure into one line.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import pickle
import warnings
import zipfile
from pathlib import Path

from .errors import LoadError, UnsafeFileError, first_line

_TRUST = "pass --trust-pickle (trust_pickle=True) only if you trust the file's author"


class _Refused(Exception):
    pass


def _safe_torch_load(data: bytes, entry: str, name: str) -> None:
    import torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - anything the safe unpickler rejects needs the unsafe one
        raise UnsafeFileError(f"{name}: entry {entry!r} is a pickle that torch's safe loader refuses (loading it could run "
                              f"code from the file); {_TRUST}") from None


def inspect_pt2(blob: bytes, name: str) -> None:
    """Raise UnsafeFileError if loading this ``.pt2`` archive would unpickle anything; LoadError if it is not one."""
    try:
        z = zipfile.ZipFile(io.BytesIO(blob))
        names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise LoadError(f"{name} is not a readable torch.export file ({first_line(e, 80)}); re-save it with "
                        "torch.export.save") from None
    for entry in names:
        tail = entry.split("/", 1)[1] if "/" in entry else entry
        if tail.endswith(("_config.json",)) and ("/weights/" in entry or "/constants/" in entry):
            try:
                cfg = json.loads(z.read(entry).decode("utf-8")).get("config", {})
            except (ValueError, UnicodeDecodeError, AttributeError) as e:
                raise LoadError(f"{name}: entry {entry!r} is not valid JSON ({first_line(e, 60)})") from None
            for fqn, meta in (cfg.items() if isinstance(cfg, dict) else []):
                meta = meta if isinstance(meta, dict) else {}
                path = str(meta.get("path_name", ""))
                if meta.get("use_pickle"):
                    raise UnsafeFileError(f"{name}: {fqn!r} ({entry}) is stored as a pickle, which could run code "
                                          f"when loaded; {_TRUST}")
                if path.startswith(("custom_obj", "opaque_obj")):
                    raise UnsafeFileError(f"{name}: constant {fqn!r} is a pickled object ({path}), which could run "
                                          f"code when loaded; {_TRUST}")
        elif tail.endswith((".pt", ".pkl")) or "/data.pkl" in entry:
            # sample inputs, legacy weights/constants: all must pass torch's safe (weights-only) unpickler
            _safe_torch_load(z.read(entry), entry, name)


@contextlib.contextmanager
def no_unpickling():
    """Inside the block, torch.load only runs the weights-only unpickler and plain pickle refuses."""
    import torch

    saved = (torch.load, pickle.loads, getattr(torch._C, "_pickle_load_obj", None))

    def safe_load(f, *a, **kw):
        kw["weights_only"] = True
        return saved[0](f, *a, **kw)

    def refuse(*a, **kw):
        raise _Refused("the file asks for a pickled object")

    torch.load = safe_load
    pickle.loads = refuse
    if saved[2] is not None:
        torch._C._pickle_load_obj = refuse
    try:
        yield
    finally:
        torch.load, pickle.loads = saved[0], saved[1]
        if saved[2] is not None:
            torch._C._pickle_load_obj = saved[2]


@contextlib.contextmanager
def quiet_loggers(*names: str):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def load_exported_program(path: str | Path, *, trust_pickle: bool = False):
    """``torch.export.load`` of ``path``, with nothing unpickled unless ``trust_pickle``."""
    import torch

    p = Path(path)
    try:
        blob = p.read_bytes()
    except OSError as e:
        raise LoadError(f"cannot read {p}: {e.strerror or first_line(e)}") from None
    if not blob:
        raise LoadError(f"{p} is empty; re-save it with torch.export.save")
    if not trust_pickle:
        inspect_pt2(blob, str(p))
    guard = contextlib.nullcontext() if trust_pickle else no_unpickling()
    # every later copy of the program's module (the teacher, a candidate) copies its pytree specs, and torch warns of
    # its own deprecated LeafSpec check each time: noise for the user, nothing they can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
    try:
        with quiet_loggers("torch.export", "torch._export", "torch.export.pt2_archive"), guard:
            return torch.export.load(io.BytesIO(blob))
    except _Refused:
        raise UnsafeFileError(f"{p} asks for a pickled object while loading, which could run code; {_TRUST}") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad archive
        if "Weights only load failed" in str(e):
            raise UnsafeFileError(f"{p} holds pickled data that could run code when loaded; {_TRUST}") from None
        raise LoadError(f"{p} is not a readable torch.export file ({type(e).__name__}: {first_line(e, 120)}); "
                        "re-save it with torch.export.save") from None


def import_transformers():
    """``transformers``, with what it pulls in lazily imported quietly first: where torchao is installed, touching a
    model class imports it, and it logs a "Failed to load ..." warning for each CUDA kernel library a CPU build
    lacks, and torch's pytree a deprecation per enum, on every command that loads a Hugging Face model."""
    with quiet_loggers("torchao", "torch.utils._pytree"):
        try:
            import torchao  # noqa: F401
        except Exception:  # noqa: BLE001 - not installed, or broken: transformers then does without it
            pass
        import transformers

        transformers.PreTrainedModel  # noqa: B018 - its import reaches transformers' quantizer integrations
    return transformers
