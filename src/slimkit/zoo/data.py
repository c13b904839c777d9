"""Data sets as tensors: a :class:`DataBundle` holds train / calibration /
test splits whose inputs are tuples of tensors (batch first), so image,
signal and token models share one code path."""
from __future__ import annotations

import dataclasses
import gzip
import importlib
import os
import struct
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..core.errors import DataError, LoadError


@dataclasses.dataclass
class DataSplit:
    inputs: tuple[torch.Tensor, ...]
    targets: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if isinstance(self.inputs, torch.Tensor):
            self.inputs = (self.inputs,)
        self.inputs = tuple(self.inputs)
        n = {int(t.shape[0]) for t in self.inputs}
        if self.targets is not None:
            n.add(int(self.targets.shape[0]))
        if len(n) > 1:
            raise DataError(f"inputs and targets disagree on the number of samples: {sorted(n)}")

    def __len__(self) -> int:
        return int(self.inputs[0].shape[0])

    def slice(self, start: int, stop: int) -> "DataSplit":
        return DataSplit(tuple(t[start:stop] for t in self.inputs),
                         None if self.targets is None else self.targets[start:stop])

    def take(self, idx) -> "DataSplit":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return DataSplit(tuple(t[idx] for t in self.inputs), None if self.targets is None else self.targets[idx])

    def batches(self, batch_size: int) -> Iterator[tuple[tuple[torch.Tensor, ...], Optional[torch.Tensor]]]:
        for i in range(0, len(self), batch_size):
            s = self.slice(i, i + batch_size)
            yield s.inputs, s.targets


@dataclasses.dataclass
class DataBundle:
    """A named data set ready for a model.

    ``task`` is ``classification`` (metric: accuracy) or ``embedding``
    (metric: fidelity to reference embeddings). ``dynamic_axes`` names the
    non-batch axes that may vary per input (e.g. sequence length).
    """

    name: str
    task: str
    train: Optional[DataSplit]
    test: DataSplit
    calib: Optional[DataSplit] = None
    input_names: Sequence[str] = ("input",)
    dynamic_axes: dict = dataclasses.field(default_factory=dict)
    num_classes: Optional[int] = None
    description: str = ""
    augment: Optional[str] = None  # label-preserving augmentation recovery training may use: shift2d | shift1d

    def __post_init__(self) -> None:
        if self.calib is None and self.train is not None:
            n = min(len(self.train), 256)
            g = torch.Generator().manual_seed(1234)
            self.calib = self.train.take(torch.randperm(len(self.train), generator=g)[:n])
        if self.calib is None:
            self.calib = self.test
        if len(self.input_names) != len(self.test.inputs):
            raise DataError(f"{self.name}: {len(self.input_names)} input names for {len(self.test.inputs)} inputs")
        for split_name, split in (("train", self.train), ("test", self.test)):
            if split is None:
                continue
            for t in split.inputs:
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise DataError(f"data set {self.name!r}: {split_name} inputs contain NaN or Inf; clean them first")

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        src = self.test
        if batch <= len(src):
            return src.slice(0, batch).inputs
        reps = -(-batch // len(src))
        return tuple(torch.cat([t] * reps)[:batch] for t in src.inputs)

    def input_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(t.shape[1:]) for t in self.test.inputs]


# --------------------------------------------------------------------------- built-in data sets

def digits(size: int = 16) -> DataBundle:
    """scikit-learn's handwritten digits (1797 8x8 images, shipped with the
    package), upsampled to ``size``x``size``, fixed stratified split 1437/360."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    y = torch.tensor(d.target, dtype=torch.long)
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=360, stratify=d.target, random_state=0)
    return DataBundle("digits", "classification", DataSplit(x[idx_tr], y[idx_tr]), DataSplit(x[idx_te], y[idx_te]),
                      num_classes=10, description="scikit-learn digits, 16x16, 1437 train / 360 test",
                      augment="shift2d")


def mnist1d() -> DataBundle:
    """MNIST-1D generated offline by the ``mnist1d`` package (4000/1000)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    d = make_dataset(args)
    x = torch.tensor(d["x"], dtype=torch.float32).unsqueeze(1)
    xt = torch.tensor(d["x_test"], dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d["y"], dtype=torch.long)
    yt = torch.tensor(d["y_test"], dtype=torch.long)
    return DataBundle("mnist1d", "classification", DataSplit(x, y), DataSplit(xt, yt), num_classes=10,
                      description="MNIST-1D (mnist1d.make_dataset defaults), 4000 train / 1000 test, length 40")


def sentences(tokenizer_dir: str | os.PathLike, max_length: int = 64) -> DataBundle:
    """The built-in English sentences tokenized for a sentence-embedding model.
    No labels: the metric is fidelity to a reference model's embeddings."""
    from transformers import AutoTokenizer

    from .sentences import SENTENCES

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
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
    x = torch.as_tensor(np.asarray(x))
    if x.dtype == torch.float64 or x.dtype == torch.uint8:
        x = x.float() / (255.0 if x.dtype == torch.uint8 else 1.0)
    n = x.shape[0]
    if n < 2:
        raise DataError(f"{name}: needs at least 2 samples, found {n}")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    k = max(1, int(round(n * test_fraction)))
    yt = None if y is None else torch.as_tensor(np.asarray(y)).long()
    tr, te = perm[k:], perm[:k]
    split = DataSplit(x, yt)
    task = "classification" if yt is not None else "embedding"
    ncls = int(yt.max()) + 1 if yt is not None else None
    return DataBundle(name, task, split.take(tr), split.take(te), num_classes=ncls)


def from_npz(path: str) -> DataBundle:
    p = Path(path)
    if not p.is_file():
        raise LoadError(f"npz file not found: {p}; expected arrays x and y (optionally x_test, y_test)")
    try:
        z = np.load(p, allow_pickle=False)
        keys = set(z.files)
    except Exception as e:
        raise LoadError(f"cannot read {p} as npz ({type(e).__name__}); write it with numpy.savez(x=..., y=...)") from None
    if "x" not in keys:
        raise LoadError(f"{p} has no array 'x' (found: {', '.join(sorted(keys)) or 'none'}); save inputs as x and labels as y")
    if "x_test" in keys:
        def fl(a):
            t = torch.as_tensor(a)
            return t.float() if t.is_floating_point() else t
        y = torch.as_tensor(z["y"]).long() if "y" in keys else None
        yt = torch.as_tensor(z["y_test"]).long() if "y_test" in keys else None
        return DataBundle(p.stem, "classification" if y is not None else "embedding",
                          DataSplit(fl(z["x"]), y), DataSplit(fl(z["x_test"]), yt),
                          num_classes=int(y.max()) + 1 if y is not None else None)
    return _split_xy(z["x"], z["y"] if "y" in keys else None, p.stem)


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
                    with Image.open(f) as im:
                        im = im.convert("RGB")
                        if size:
                            im = im.resize((size, size))
                        xs.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)
                        ys.append(ci)
        if not xs:
            raise LoadError(f"no images found under {d}; expected {d}/<class>/<image>.png")
        if len({x.shape for x in xs}) > 1:
            raise DataError(f"images under {d} differ in size; pass a size (folder:PATH?size=32)")
        return np.stack(xs), np.array(ys), classes

    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, classes = read(root / "train")
        xt, yt, _ = read(root / "test", classes)
        return DataBundle(root.name, "classification", DataSplit(torch.tensor(x), torch.tensor(y)),
                          DataSplit(torch.tensor(xt), torch.tensor(yt)), num_classes=len(classes))
    x, y, classes = read(root)
    return _split_xy(x, y, root.name)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise LoadError(f"{path} is not an idx file (bad magic)")
    ndim = data[3]
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
    out = fn()
    if isinstance(out, DataBundle):
        return out
    if isinstance(out, dict) and "x" in out:
        return _split_xy(out["x"], out.get("y"), fn_name)
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return _split_xy(out[0], out[1], fn_name)
    raise LoadError(f"{spec} returned {type(out).__name__}; return a slimkit DataBundle, (x, y) or {{'x':..., 'y':...}}")
