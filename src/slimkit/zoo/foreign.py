"""Foreign architectures: the kinds of model users bring, built from small configs (random weights, no download)
and trained briefly on built-in data, so that every technique can be tried on them offline.

Hugging Face ``transformers`` models (ResNet, MobileNetV2, ConvNeXt, ViT on 16x16 digits; BERT, DistilBERT on
digits read as 64 pixel tokens) are wrapped the way a user wraps them to get one tensor out (``.logits``); plain
PyTorch models cover inverted residuals, ``nn.TransformerEncoder``, a GRU and a tabular MLP.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.safeload import import_transformers
from .data import DIGIT_LEVELS


class Logits(nn.Module):
    """A Hugging Face model that returns a ``ModelOutput``, wrapped to return its logits (what slimkit needs)."""

    def __init__(self, model: nn.Module, input_kw: str):
        super().__init__()
        self.model = model
        self.input_kw = input_kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.input_kw: x}).logits


def _hf_image(kind: str) -> nn.Module:
    T = import_transformers()

    common = dict(num_channels=1, num_labels=10)
    if kind == "resnet":
        m = T.ResNetForImageClassification(T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48], depths=[1, 1, 1],
                                                          layer_type="basic", downsample_in_first_stage=False,
                                                          **common))
    elif kind == "mobilenetv2":
        m = T.MobileNetV2ForImageClassification(T.MobileNetV2Config(image_size=16, depth_multiplier=0.35,
                                                                    min_depth=8, classifier_dropout_prob=0.0,
                                                                    **common))
    elif kind == "convnext":
        m = T.ConvNextForImageClassification(T.ConvNextConfig(patch_size=2, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1],
                                                              **common))
    elif kind == "vit":
        m = T.ViTForImageClassification(T.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64, **common))
    else:  # pragma: no cover - the table below names every kind
        raise ValueError(kind)
    return Logits(m, "pixel_values")


def _hf_text(kind: str) -> nn.Module:
    T = import_transformers()

    common = dict(vocab_size=DIGIT_LEVELS, max_position_embeddings=64, num_labels=10)
    if kind == "bert":
        m = T.BertForSequenceClassification(T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                         intermediate_size=64, hidden_dropout_prob=0.0,
                                                         attention_probs_dropout_prob=0.0, **common))
    elif kind == "distilbert":
        m = T.DistilBertForSequenceClassification(T.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                                     dropout=0.0, attention_dropout=0.0,
                                                                     seq_classif_dropout=0.0, **common))
    else:  # pragma: no cover
        raise ValueError(kind)
    return Logits(m, "input_ids")


class InvertedResidualNet(nn.Module):
    """MobileNetV2-style blocks written by hand: 1x1 expand, 3x3 depthwise, 1x1 project, residual add."""

    def __init__(self, width: int = 16, expand: int = 4, blocks: int = 2, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.blocks = nn.ModuleList()
        for _ in range(blocks):
            h = width * expand
            self.blocks.append(nn.Sequential(
                nn.Conv2d(width, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                nn.Conv2d(h, width, 1, bias=False), nn.BatchNorm2d(width)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        return self.head(torch.flatten(self.pool(x), 1))


class TransformerClassifier(nn.Module):
    """A ViT-style classifier on ``nn.TransformerEncoder``: 4x4 patches of a 16x16 image, mean-pooled."""

    def __init__(self, dim: int = 32, heads: int = 4, layers: int = 2, ffn: int = 64, num_classes: int = 10):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 4, stride=4)
        self.pos = nn.Parameter(torch.zeros(1, 16, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, ffn, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.encoder(t).mean(1))


class GRUClassifier(nn.Module):
    """A GRU over the rows of a 16x16 image (16 steps of 16 features); the last state -> classes."""

    def __init__(self, hidden: int = 48, num_classes: int = 10):
        super().__init__()
        self.rnn = nn.GRU(16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.rnn(x[:, 0])
        return self.head(seq[:, -1])


class TabularMLP(nn.Module):
    """A tabular MLP with LayerNorm and GELU on flat features (the 64 raw pixels of a digit)."""

    def __init__(self, features: int = 64, hidden: int = 128, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden // 2), nn.LayerNorm(hidden // 2), nn.GELU(),
                                 nn.Linear(hidden // 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


TEXT_TRAINING = {"epochs": 40, "lr": 5e-3}  # sequence models on pixel tokens need longer (15 epochs: 37% / 48%)

# name -> (builder, data set, summary, training overrides)
FOREIGN = {
    "hf-resnet": (lambda: _hf_image("resnet"), "digits", "Hugging Face ResNet (basic blocks, 3 stages)", {}),
    "hf-mobilenetv2": (lambda: _hf_image("mobilenetv2"), "digits", "Hugging Face MobileNetV2 (depth 0.35)", {}),
    "hf-convnext": (lambda: _hf_image("convnext"), "digits", "Hugging Face ConvNeXt (2 stages)", {}),
    "hf-vit": (lambda: _hf_image("vit"), "digits", "Hugging Face ViT (4x4 patches, 2 layers, 4 heads)", {}),
    "hf-bert": (lambda: _hf_text("bert"), "digits-tokens", "Hugging Face BERT (2 layers, 4 heads) on pixel tokens",
                TEXT_TRAINING),
    "hf-distilbert": (lambda: _hf_text("distilbert"), "digits-tokens",
                      "Hugging Face DistilBERT (2 layers, 4 heads) on pixel tokens", TEXT_TRAINING),
    "inverted-residual": (InvertedResidualNet, "digits", "hand-written inverted residual blocks (depthwise, ReLU6)", {}),
    "transformer-encoder": (TransformerClassifier, "digits", "nn.TransformerEncoder over 4x4 patches", {}),
    "gru": (GRUClassifier, "digits", "nn.GRU over image rows", {}),
    "tabular-mlp": (TabularMLP, "digits-flat", "MLP with LayerNorm/GELU on 64 flat features", {}),
}
