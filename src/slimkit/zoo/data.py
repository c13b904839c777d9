"""Data sets: the built-in ones (digits, mnist1d, sentences...) and the loaders of users' files (npz, image folders,
IDX, a Python callable), each returning a :class:`~slimkit.core.data.DataBundle`."""
from __future__ import annotations

import gzip
import importlib
import os
import struct
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..core.data import DataBundle, DataSplit, inputs_tensor, labels  # noqa: F401 - the data contract lives in core
from ..core.errors import DataError, LoadError, SlimkitError, first_line


# --------------------------------------------------------------------------- built-in data sets

def digits(size: int = 16) -> DataBundle:
    """scikit-learn's handwritten digits (1797 8x8 images, shipped with the
    package), upsampled to ``size``x``size``, fixed stratified split 1437/360."""
    d = _cached_arrays("digits", "scikit-learn", _digits_arrays, ("images", "target", "idx_tr", "idx_te"))
    x = torch.tensor(d["images"], dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    y = torch.tensor(d["target"], dtype=torch.long)
    idx_tr, idx_te = d["idx_tr"], d["idx_te"]
    return DataBundle("digits", "classification", DataSplit(x[idx_tr], y[idx_tr]), DataSplit(x[idx_te], y[idx_te]),
                      num_classes=10, description="scikit-learn digits, 16x16, 1437 train / 360 test",
                      augment="shift2d")


def digits_flat() -> DataBundle:
    """digits at their native 8x8 as 64 flat features (a tabular data set), the same split."""
    d = digits(8)
    flat = lambda s: DataSplit(s.inputs[0].flatten(1), s.targets)  # noqa: E731
    return DataBundle("digits-flat", "classification", flat(d.train), flat(d.test), num_classes=10,
                      description="scikit-learn digits, 64 flat features, 1437 train / 360 test")


DIGIT_LEVELS = 17  # digits' 8x8 pixels take the values 0..16: one token each in digits_tokens


def digits_tokens() -> DataBundle:
    """digits at 8x8 read as a sequence of 64 tokens (pixel values 0..16), for text-style models."""
    d = digits(8)
    top = DIGIT_LEVELS - 1

    def tok(s: DataSplit) -> DataSplit:
        return DataSplit(torch.round((s.inputs[0].flatten(1) * 0.5 + 0.5) * top).long().clamp(0, top), s.targets)

    return DataBundle("digits-tokens", "classification", tok(d.train), tok(d.test), input_names=("input_ids",),
                      num_classes=10, description="scikit-learn digits as 64 pixel tokens (17 values), 1437 / 360")


def mnist1d() -> DataBundle:
    """MNIST-1D generated offline by the ``mnist1d`` package (4000/1000), kept in the user cache after the first
    generation (about 7 s of interpolation per call; the arrays are a few MB)."""
    d = _cached_arrays("mnist1d", "mnist1d", _mnist1d_arrays, ("x", "y", "x_test", "y_test"))
    x = torch.tensor(d["x"], dtype=torch.float32).unsqueeze(1)
    xt = torch.tensor(d["x_test"], dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d["y"], dtype=torch.long)
    yt = torch.tensor(d["y_test"], dtype=torch.long)
    return DataBundle("mnist1d", "classification", DataSplit(x, y), DataSplit(xt, yt), num_classes=10,
                      description="MNIST-1D (mnist1d.make_dataset defaults), 4000 train / 1000 test, length 40")


def _digits_arrays() -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx_tr, idx_te = train_test_split(np.arange(len(d.target)), test_size=360, stratify=d.target, random_state=0)
    return {"images": d.images, "target": d.target, "idx_tr": idx_tr, "idx_te": idx_te}


def _mnist1d_arrays() -> dict:
    from mnist1d.data import get_dataset_args, make_dataset

    return make_dataset(get_dataset_args())


def _cached_arrays(name: str, package: str, make, names: tuple) -> dict:
    """A built-in data set's arrays from ``cache_dir()/data`` (a plain ``.npz``, read without pickle), keyed by the
    version of the package that makes them; else made by ``make()`` and cached (atomic write). Saves every process
    the import of scikit-learn (about 2 s) or MNIST-1D's generation (about 7 s per call)."""
    import hashlib
    import io
    from importlib.metadata import version

    from ..core.io import atomic_write_bytes, cache_dir

    tag = hashlib.sha256(f"{name} {package} {version(package)} 1".encode()).hexdigest()[:16]
    path = cache_dir() / "data" / f"{name}-{tag}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in names}
        except (OSError, ValueError, KeyError):  # a damaged copy: make it again
            pass
    d = {k: np.asarray(v) for k, v in make().items() if k in names}
    buf = io.BytesIO()
    np.savez(buf, **d)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except SlimkitError:  # an unwritable cache only costs the next run the work
        pass
    return d


def sentences(tokenizer_dir: str | os.PathLike, max_length: int = 64) -> DataBundle:
    """The built-in English sentences tokenized for a sentence-embedding model.
    No labels: the metric is fidelity to a reference model's embeddings."""
    from transformers import AutoTokenizer

    from .sentences import SENTENCES

    from ..core.safeload import no_unpickling

    try:
        with no_unpickling():
            tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - transformers raises many types
        raise LoadError(f"cannot load the tokenizer in {tokenizer_dir}: {first_line(e)}") from None
    enc = tok(list(SENTENCES), padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
    split = DataSplit((ids, mask))
    n = len(SENTENCES)
    # training (for distillation) and calibration use the first 60%, evaluation uses all sentences
    k = int(n * 0.6)
    return DataBundle("sentences", "embedding", split.slice(0, k), split, calib=split.slice(0, min(k, 128)),
                      input_names=("input_ids", "attention_mask"),
                      dynamic_axes={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}},
                      description=f"{n} built-in English sentences, padded to {ids.shape[1]} tokens")


# --------------------------------------------------------------------------- user files

def _split_xy(x: np.ndarray, y: Optional[np.ndarray], name: str, test_fraction=0.2) -> DataBundle:
    x = inputs_tensor(x, f"{name}: x")
    n = x.shape[0]
    if n < 2:
        raise DataError(f"{name}: needs at least 2 samples, found {n}")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    k = max(1, int(round(n * test_fraction)))
    yt = None if y is None else labels(y, f"{name}: y")
    tr, te = perm[k:], perm[:k]
    split = DataSplit(x, yt)
    task = "classification" if yt is not None else "embedding"
    ncls = int(yt.max()) + 1 if yt is not None else None
    return DataBundle(name, task, split.take(tr), split.take(te), num_classes=ncls)


def from_npz(path: str) -> DataBundle:
    p = Path(path)
    if not p.is_file():
        raise LoadError(f"npz file not found: {p}; expected arrays x and y (optionally x_test, y_test, x_val, "
                        "y_val)")
    try:
        z = np.load(p, allow_pickle=False)
        keys = set(z.files)
    except Exception as e:
        raise LoadError(f"cannot read {p} as npz ({type(e).__name__}); write it with numpy.savez(x=..., y=...)") from None
    if "x" not in keys:
        raise LoadError(f"{p} has no array 'x' (found: {', '.join(sorted(keys)) or 'none'}); save inputs as x and labels as y")
    try:
        arrays = {k: z[k] for k in keys}
    except Exception as e:  # noqa: BLE001 - object arrays (need pickle) or a corrupt member
        raise DataError(f"cannot read the arrays in {p} ({first_line(e, 100)}); save plain numeric arrays with "
                        "numpy.savez (no object arrays)") from None
    if "x_test" in keys:
        x, xt = inputs_tensor(arrays["x"], f"{p.name}: x"), inputs_tensor(arrays["x_test"], f"{p.name}: x_test")
        y = labels(arrays["y"], f"{p.name}: y") if "y" in keys else None
        yt = labels(arrays["y_test"], f"{p.name}: y_test") if "y_test" in keys else None
        val = None
        if "x_val" in keys:
            xv = inputs_tensor(arrays["x_val"], f"{p.name}: x_val")
            yv = labels(arrays["y_val"], f"{p.name}: y_val") if "y_val" in keys else None
            if (yv is None) != (y is None):
                raise DataError(f"{p.name}: x_val needs y_val exactly when x has labels y")
            val = DataSplit(xv, yv)
        ncls = max([int(t.max()) if t is not None and len(t) else -1
                    for t in (y, yt, None if val is None else val.targets)]) + 1
        return DataBundle(p.stem, "classification" if y is not None else "embedding",
                          DataSplit(x, y), DataSplit(xt, yt),
                          num_classes=ncls if y is not None else None, val=val)
    if "x_val" in keys:
        raise DataError(f"{p.name}: x_val is given without x_test; save x/y (training), x_val/y_val and "
                        "x_test/y_test")
    return _split_xy(arrays["x"], arrays["y"] if "y" in keys else None, p.stem)


_IMG_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def from_folder(path: str, size: Optional[int] = None) -> DataBundle:
    """A torchvision-style image folder: ``ROOT/<class>/*.png``, or
    ``ROOT/train/<class>/...`` and ``ROOT/test/<class>/...``."""
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise LoadError(f"image folder not found: {root}; expected ROOT/<class>/<image> files")

    def read(d: Path, classes=None):
        classes = classes or sorted(c.name for c in d.iterdir() if c.is_dir())
        xs, ys = [], []
        for ci, c in enumerate(classes):
            for f in sorted((d / c).iterdir()) if (d / c).is_dir() else []:
                if f.suffix.lower() in _IMG_EXT:
                    try:
                        with Image.open(f) as im:
                            im = im.convert("RGB")
                            if size:
                                im = im.resize((size, size))
                            xs.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)
                    except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError, truncated data
                        raise DataError(f"cannot read image {f} ({first_line(e, 80)}); remove or replace the "
                                        "file") from None
                    ys.append(ci)
        if not xs:
            raise LoadError(f"no images found under {d}; expected {d}/<class>/<image>.png")
        if len({x.shape for x in xs}) > 1:
            raise DataError(f"images under {d} differ in size; pass a size (folder:PATH?size=32)")
        return np.stack(xs), np.array(ys), classes

    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, classes = read(root / "train")
        xt, yt, _ = read(root / "test", classes)
        val = None
        if (root / "val").is_dir():
            xv, yv, _ = read(root / "val", classes)
            val = DataSplit(torch.tensor(xv), torch.tensor(yv))
        return DataBundle(root.name, "classification", DataSplit(torch.tensor(x), torch.tensor(y)),
                          DataSplit(torch.tensor(xt), torch.tensor(yt)), num_classes=len(classes), val=val)
    x, y, classes = read(root)
    return _split_xy(x, y, root.name)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise LoadError(f"cannot read {path} ({first_line(e, 80)})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise LoadError(f"{path} is not an unsigned-byte idx file (bad magic)")
    ndim = data[3]
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise LoadError(f"{path} is truncated: its header ends before the {ndim} dimension sizes")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise LoadError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def from_idx(path: str) -> DataBundle:
    """MNIST-style idx files in a folder: train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (optionally .gz)."""
    root = Path(path)
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    files = []
    for n in names:
        cands = [root / n, root / (n + ".gz")]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise LoadError(f"missing {n}[.gz] in {root}; place the four MNIST idx files there (slimkit never downloads)")
        files.append(found)
    x, y, xt, yt = (_read_idx(f) for f in files)
    norm = lambda a: ((torch.tensor(a, dtype=torch.float32) / 255.0) - 0.1307) / 0.3081  # noqa: E731
    return DataBundle(root.name, "classification", DataSplit(norm(x).unsqueeze(1), torch.tensor(y).long()),
                      DataSplit(norm(xt).unsqueeze(1), torch.tensor(yt).long()), num_classes=10)


def from_callable(spec: str) -> DataBundle:
    mod_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise LoadError(f"cannot import data function {spec!r}: {e}") from None
    try:
        out = fn()
    except SlimkitError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's function raised
        raise DataError(f"data function {spec} raised {type(e).__name__}: {first_line(e)}") from None
    if isinstance(out, DataBundle):
        return out
    if isinstance(out, dict) and "x" in out:
        return _split_xy(out["x"], out.get("y"), fn_name)
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return _split_xy(out[0], out[1], fn_name)
    raise LoadError(f"{spec} returned {type(out).__name__}; return a slimkit DataBundle, (x, y) or {{'x':..., 'y':...}}")
