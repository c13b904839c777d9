"""Distillation losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: KL(teacher_T || student_T) * T^2, batch-mean."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    p_t = F.softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * (t * t)


def kd_loss(student_logits, teacher_logits, targets, *, temperature: float, alpha: float) -> torch.Tensor:
    """alpha * cross-entropy(labels) + (1 - alpha) * T^2-scaled KL to the teacher."""
    soft = kd_logit_loss(student_logits, teacher_logits, temperature)
    if targets is None or alpha == 0:
        return soft
    return alpha * F.cross_entropy(student_logits, targets) + (1 - alpha) * soft


def embedding_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """1 - cosine + MSE to the teacher's embeddings (no labels needed)."""
    cos = F.cosine_similarity(student_emb, teacher_emb, dim=-1).mean()
    return (1 - cos) + F.mse_loss(student_emb, teacher_emb)
