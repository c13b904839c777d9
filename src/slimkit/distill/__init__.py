"""Knowledge distillation: losses and the recovery trainer."""
from .losses import embedding_loss, kd_logit_loss, kd_loss
from .trainer import recover

__all__ = ["embedding_loss", "kd_logit_loss", "kd_loss", "recover"]
