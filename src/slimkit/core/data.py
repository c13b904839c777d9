"""The data contract every layer shares: a :class:`DataBundle` holds train / calibration / test splits whose inputs
are tuples of tensors (batch first), so image, signal and token models share one code path. It lives in core (not
in the zoo, which holds the built-in data sets and the file loaders) so that export, evaluation and the techniques
depend on the contract only."""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from .errors import DataError


@dataclasses.dataclass
class DataSplit:
    inputs: tuple[torch.Tensor, ...]
    targets: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if isinstance(self.inputs, torch.Tensor):
            self.inputs = (self.inputs,)
        self.inputs = tuple(self.inputs)
        if not self.inputs:
            raise DataError("a data split needs at least one input array")
        for t in self.inputs:
            if not isinstance(t, torch.Tensor):
                raise DataError(f"data inputs must be tensors or numeric arrays, not {type(t).__name__}")
            if t.ndim == 0:
                raise DataError("data inputs are 0-d (a single number); give arrays with a sample axis first")
        if self.targets is not None:
            self.targets = labels(self.targets, "labels")
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
    #: a validation split the user's model was not trained on (npz ``x_val``/``y_val``, folder ``ROOT/val``): the
    #: planner decides on it when given (``slimkit optimize --val-from``)
    val: Optional[DataSplit] = None

    def __post_init__(self) -> None:
        if self.calib is None and self.train is not None:
            n = min(len(self.train), 256)
            g = torch.Generator().manual_seed(1234)
            self.calib = self.train.take(torch.randperm(len(self.train), generator=g)[:n])
        if self.calib is None:
            self.calib = self.test
        if len(self.input_names) != len(self.test.inputs):
            raise DataError(f"{self.name}: {len(self.input_names)} input names for {len(self.test.inputs)} inputs")
        for split_name, split in (("train", self.train), ("test", self.test), ("val", self.val)):
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


def _numeric(a, what: str, need: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        kind = "text" if arr.dtype.kind in "US" else "objects"
        raise DataError(f"{what}: dtype {arr.dtype} ({kind}); {need}")
    return torch.as_tensor(arr)


def inputs_tensor(a, what: str) -> torch.Tensor:
    """A numeric array as a tensor (float64 -> float32, uint8 images -> [0, 1]), or one DataError line."""
    t = _numeric(a, what, "slimkit needs numeric arrays (float or integer)")
    if t.ndim == 0:
        raise DataError(f"{what} is 0-d (a single number); save an array with the samples along the first axis")
    if t.shape[0] == 0:
        raise DataError(f"{what} is empty (0 samples)")
    if t.dtype == torch.float64:
        t = t.float()
    elif t.dtype == torch.uint8:
        t = t.float() / 255.0
    return t


def labels(a, what: str) -> torch.Tensor:
    """Class labels as int64: whole, finite, non-negative numbers, or one DataError line."""
    t = _numeric(a, what, "class labels must be whole numbers 0..C-1")
    if t.ndim != 1:
        raise DataError(f"{what} have shape {tuple(t.shape)}; class labels are one whole number per sample")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()):
            raise DataError(f"{what} contain NaN or Inf ({int((~torch.isfinite(t)).sum())} of {len(t)}); class "
                            "labels must be whole numbers 0..C-1")
        if not bool((t == t.round()).all()):
            raise DataError(f"{what} are not whole numbers; class labels must be 0..C-1")
    if t.dtype == torch.bool:
        t = t.long()
    if len(t) and int(t.min()) < 0:
        raise DataError(f"{what} contain negative values (min {int(t.min())}); class labels must be 0..C-1")
    return t.long()


def augment_batch(x: torch.Tensor, kind: Optional[str], g: torch.Generator) -> torch.Tensor:
    """The label-preserving augmentation a bundle names (``DataBundle.augment``): ``shift2d`` rolls images by up to
    one pixel each way, ``shift1d`` rolls sequences by up to two steps; anything else leaves ``x`` as it is."""
    if kind == "shift2d":
        dx, dy = (torch.randint(-1, 2, (2,), generator=g)).tolist()
        return torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if kind == "shift1d":
        d = int(torch.randint(-2, 3, (1,), generator=g))
        return torch.roll(x, shifts=d, dims=2)
    return x


@torch.no_grad()
def predict(model: torch.nn.Module, split: DataSplit, batch_size: int = 256) -> torch.Tensor:
    """The model's outputs on a split, in eval mode, batch by batch (the model keeps its own train/eval mode)."""
    from .context import eval_mode

    with eval_mode(model):
        return torch.cat([model(*x) for x, _ in split.batches(batch_size)])
