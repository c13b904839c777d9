"""Built-in architectures. Plain nn.Modules, nothing slimkit-specific inside,
so that every technique sees the same kind of model a user brings."""
from __future__ import annotations

import torch
import torch.nn as nn


class LeNet5(nn.Module):
    """LeNet-5-style CNN for 1x16x16 images (digits upsampled from 8x8)."""

    def __init__(self, num_classes: int = 10, c1: int = 16, c2: int = 32, fc1: int = 120, fc2: int = 84):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 4 * 4, fc1), nn.ReLU(), nn.Linear(fc1, fc2), nn.ReLU(),
            nn.Linear(fc2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """The classic MNIST "SimpleNN" shape: in -> 256 -> 128 -> 64 -> classes."""

    def __init__(self, in_features: int = 256, hidden=(256, 128, 64), num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN1D(nn.Module):
    """A small 1-D CNN for MNIST-1D (1x40 signals)."""

    def __init__(self, num_classes: int = 10, channels: int = 32, length: int = 40):
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv1d(1, c, 5, padding=2), nn.BatchNorm1d(c), nn.ReLU(),
            nn.Conv1d(c, c, 3, padding=1, stride=2), nn.BatchNorm1d(c), nn.ReLU(),
            nn.Conv1d(c, 2 * c, 3, padding=1), nn.BatchNorm1d(2 * c), nn.ReLU(),
            nn.Conv1d(2 * c, 2 * c, 3, padding=1, stride=2), nn.BatchNorm1d(2 * c), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * c * (length // 4), 128), nn.ReLU(),
                                        nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CifarCNN(nn.Module):
    """A compact CIFAR-10 CNN (3x32x32) for users with their own CIFAR files."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width

        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(*block(3, w), *block(w, w), nn.MaxPool2d(2), *block(w, 2 * w),
                                      *block(2 * w, 2 * w), nn.MaxPool2d(2), *block(2 * w, 4 * w), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 256), nn.ReLU(), nn.Linear(256, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ConvRNN1D(nn.Module):
    """A recurrent classifier for MNIST-1D (1x40 signals): a strided Conv1d front end
    (40 -> 20 steps of 32 features), a 2-layer LSTM (or GRU), the last step's state -> classes."""

    def __init__(self, num_classes: int = 10, channels: int = 32, hidden: int = 64, layers: int = 2,
                 cell: str = "lstm"):
        super().__init__()
        self.front = nn.Sequential(nn.Conv1d(1, channels, 5, padding=2, stride=2), nn.ReLU())
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](channels, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.rnn(self.front(x).transpose(1, 2))
        return self.head(seq[:, -1])
