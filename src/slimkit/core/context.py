"""The context passed explicitly to every technique (no global session)."""
from __future__ import annotations

import contextlib
import dataclasses
import random
from typing import Any, Callable, Optional

import numpy as np
import torch

from .progress import info



@dataclasses.dataclass
class Context:
    """Everything a technique may need, handed over explicitly.

    ``data`` holds the train/calibration/eval splits; ``teacher`` is the
    original model (a frozen copy) for distillation; ``seed`` makes runs
    deterministic; ``log`` is where techniques write notes for the report.
    """

    data: Optional[Any] = None  # a slimkit.core.data.DataBundle (Any: context.py is imported by data users)
    teacher: Optional[torch.nn.Module] = None
    seed: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    #: what a technique could not do of what it was asked (layers it left alone, and why): console + report
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: one row per training epoch of every recovery (stage, epoch, loss, val): the report's training curves
    history: list[dict] = dataclasses.field(default_factory=list)
    #: the recipe stage being run (prefixes warnings and training-history rows); set by the runner
    stage: Optional[str] = None
    #: where a technique's own recovery may checkpoint (resumable training); set by the runner
    checkpoint: Optional[str] = None
    #: technique-specific report tables (title -> rows): channels kept per group, layers left alone, ...
    tables: dict[str, list] = dataclasses.field(default_factory=dict)
    #: called as ``on_epoch(model, row)`` after each recovery epoch (row: the history entry); it may raise to stop
    #: the run (the planner stops unpromising candidates this way)
    on_epoch: Optional[Callable[[torch.nn.Module, dict], None]] = None

    @property
    def example_inputs(self):
        if self.data is None:
            return None
        return self.data.example_inputs(1)

    def has(self, need: str) -> bool:
        d = self.data
        if need == "teacher":
            return self.teacher is not None
        if need == "example_inputs":
            return d is not None
        if need == "calibration_data":
            return d is not None and d.calib is not None and len(d.calib) > 1
        if need == "train_data":
            # embedding models learn from the teacher's outputs: no labels needed
            return (d is not None and d.train is not None and len(d.train) > 0
                    and (d.train.targets is not None or d.task == "embedding"))
        if need == "eval_data":
            return d is not None and d.test is not None and len(d.test) > 0
        raise KeyError(need)

    def note(self, msg: str) -> None:
        self.notes.append(msg)

    def warn(self, msg: str) -> None:
        """A partial result: kept for the report and printed now (one line on stderr)."""
        stage = self.stage
        self.warnings.append(f"{stage}: {msg}" if stage else msg)
        self.notes.append(f"warning: {msg}")
        info(f"slimkit: warning: {msg}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` intra-op threads, then restore the previous setting. CPU kernels split their
    reductions by thread count, so a fixed count is what makes training repeat bit for bit across processes and
    machines with the same instruction set."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def removing(handles):
    """Run the block, then remove every hook handle in ``handles`` (a list the block may still add to), however the
    block ends."""
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Run the block with ``model`` in eval mode, then give every submodule back the train/eval mode it had (the
    user's model leaves slimkit as it came in, also when the block fails)."""
    with preserve_mode(model):
        model.eval()
        yield model


@contextlib.contextmanager
def preserve_mode(model: torch.nn.Module):
    """Give every submodule of ``model`` back its train/eval mode when the block ends, however it ends."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
