"""Knowledge distillation: losses, the recovery trainer, and student training."""
from .losses import embedding_loss, kd_logit_loss, kd_loss
from .student import DistillConfig, StudentConfig, distill_student, distill_train, drop_layers, make_student
from .trainer import recover

__all__ = ["embedding_loss", "kd_logit_loss", "kd_loss", "recover", "DistillConfig", "StudentConfig",
           "distill_student", "distill_train", "drop_layers", "make_student"]

from ..core.family import callable_family  # noqa: E402

callable_family(__name__)  # slimkit.distill(model, config, data, teacher=...)
