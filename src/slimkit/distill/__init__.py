"""Knowledge distillation: losses and the recovery trainer."""
from .losses import embedding_loss, kd_logit_loss, kd_loss
from .trainer import recover

__all__ = ["embedding_loss", "kd_logit_loss", "kd_loss", "recover"]

from ..api import callable_family  # noqa: E402

callable_family(__name__)  # slimkit.distill(model, config, data)
