"""The recovery fine-tune config: what every recipe stage's ``finetune:`` and every training technique reads.

It lives with the trainer (``distill/trainer.py``), below the other technique families and the pipeline, so that
quantization and pruning can build one without importing the pipeline; ``pipeline.recipe`` re-exports it."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from ..core.config import Config, check_choice, check_range, Tunable
from ..core.errors import ConfigError


@dataclasses.dataclass
class Finetune(Config):
    """Recovery training after a stage: ``plain`` (labels) or ``kd`` (distil
    from the original model)."""

    TUNABLE: ClassVar = {"epochs": Tunable(2, 20, step=2), "lr": Tunable(choices=(0.002,)),
                         "method": Tunable(choices=("kd",)), "temperature": Tunable(choices=(1.0, 4.0))}

    method: str = "plain"
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    # Hinton's 4 by default; the structured-pruning recipe uses 1, where the pruned student ends above a weak teacher
    # (3 seeds: T=1 >= plain fine-tuning on digits and MNIST-1D, T=4 below plain on MNIST-1D; T=1 in turn cost the
    # factorized digits models 0.8 pt in one run: docs/BENCHMARKS.md)
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the hard-label loss in kd
    # none | auto (the data set's own label-preserving augmentation, e.g. 1-pixel shifts for digits) | shift2d | shift1d;
    # measured: it helps long recoveries (deep compression, 200 epochs) and not 20-epoch ones (docs/BENCHMARKS.md)
    augment: str = "none"
    mixup: float = 0.0  # > 0: inputs mixed with Beta(mixup, mixup) weights; KD then matches the teacher off the data
    features: list = dataclasses.field(default_factory=list)  # [[student_layer, teacher_layer], ...] hint pairs
    beta: float = 1.0  # weight of the feature (hint) loss
    patience: int = 0  # > 0: early stopping on a held-out share of the training split; the best epoch is kept
    val_fraction: float = 0.1
    precompute: bool = True  # teacher outputs computed once when no augmentation or hints need it per batch

    def validate(self) -> None:
        check_choice("finetune.method", self.method, ("plain", "kd"))
        if int(self.epochs) != self.epochs or self.epochs < 0:
            raise ConfigError(f"finetune.epochs={self.epochs} must be a whole number >= 0")
        check_range("finetune.lr", self.lr, 0, 1, lo_open=True)
        check_range("finetune.alpha", self.alpha, 0, 1)
        check_range("finetune.temperature", self.temperature, 0, 100, lo_open=True)
        check_choice("finetune.augment", self.augment, ("auto", "none", "shift2d", "shift1d"))
        check_range("finetune.mixup", self.mixup, 0, 10)
        check_range("finetune.val_fraction", self.val_fraction, 0, 0.5, lo_open=True)
        if self.patience < 0 or self.beta < 0:
            raise ConfigError("finetune.patience and finetune.beta must be >= 0")
        for p in self.features:
            if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, str) for v in p)):
                raise ConfigError(f"finetune.features entries are [student_layer, teacher_layer] pairs, not {p!r}")
