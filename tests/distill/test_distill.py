import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from slimkit.core import Context
from slimkit.core.errors import ConfigError
from slimkit.distill import StudentConfig, distill_student, drop_layers, kd_logit_loss, kd_loss, recover
from slimkit.pipeline.recipe import Finetune


def test_kd_loss_matches_a_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.0, 3.0, 1.0]])
    T = 2.0
    ps = [math.exp(v / T) for v in s[0].tolist()]
    pt = [math.exp(v / T) for v in t[0].tolist()]
    ps = [v / sum(ps) for v in ps]
    pt = [v / sum(pt) for v in pt]
    kl = sum(b * math.log(b / a) for a, b in zip(ps, pt))
    assert float(kd_logit_loss(s, t, T)) == pytest.approx(kl * T * T, rel=1e-5)
    y = torch.tensor([1])
    ce = -math.log(math.exp(2.0) / sum(math.exp(v) for v in s[0].tolist()))
    assert float(kd_loss(s, t, y, temperature=T, alpha=0.3)) == pytest.approx(0.3 * ce + 0.7 * kl * T * T, rel=1e-5)


def _acc(m, data):
    with torch.no_grad():
        return float(np.mean(m(data.test.inputs[0]).argmax(1).numpy() == data.test.targets.numpy()))


def test_checkpoint_resume_equals_an_uninterrupted_run(digits_cnn, digits, tmp_path):
    ft = Finetune(method="kd", epochs=3, lr=2e-3)
    start = copy.deepcopy(digits_cnn)
    with torch.no_grad():
        start.features[0].weight.mul_(0.5)  # something to recover
    a = copy.deepcopy(start)
    recover(a, Context(data=digits, teacher=digits_cnn), ft, checkpoint=tmp_path / "a.ckpt")

    class Interrupt(Exception):
        pass

    def boom(step, total):
        if step == int(total * 0.8):  # during the third epoch: the checkpoint holds epoch 2
            raise Interrupt

    b = copy.deepcopy(start)
    with pytest.raises(Interrupt):
        recover(b, Context(data=digits, teacher=digits_cnn), ft, checkpoint=tmp_path / "b.ckpt", on_step=boom)
    assert torch.load(tmp_path / "b.ckpt", weights_only=True)["epoch"] == 2
    b = copy.deepcopy(start)
    recover(b, Context(data=digits, teacher=digits_cnn), ft, checkpoint=tmp_path / "b.ckpt")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    # a checkpoint from other settings is refused, not silently mixed in
    with pytest.raises(ConfigError, match="different model or fine-tune"):
        recover(copy.deepcopy(start), Context(data=digits, teacher=digits_cnn), Finetune(method="kd", epochs=4),
                checkpoint=tmp_path / "b.ckpt")
    (tmp_path / "bad.ckpt").write_bytes(b"garbage")
    with pytest.raises(Exception, match="unreadable"):
        recover(copy.deepcopy(start), Context(data=digits, teacher=digits_cnn), ft, checkpoint=tmp_path / "bad.ckpt")


def test_feature_distillation_with_projection_and_early_stopping(digits_cnn, digits):
    ctx = Context(data=digits, teacher=digits_cnn)
    student = distill_student(digits_cnn, StudentConfig(width=0.5, init="random", epochs=1), ctx)
    # the student's conv has 8 channels, the teacher's 16: a learned 1x1 projection bridges them
    ft = Finetune(method="kd", epochs=3, lr=2e-3, features=[["features.4", "features.4"]], beta=0.5, patience=2)
    before = _acc(student, digits)
    recover(student, ctx, ft)
    assert _acc(student, digits) >= before
    with pytest.raises(ConfigError, match="does not exist in the student"):
        recover(student, ctx, Finetune(method="kd", epochs=1, features=[["nope", "features.4"]]))
    with pytest.raises(ConfigError, match="pairs"):
        Finetune(features=[["only-one"]])


def test_incompatible_teacher_is_refused(digits_cnn, digits):
    other = copy.deepcopy(digits_cnn)
    other.classifier[5] = nn.Linear(84, 7)
    with pytest.raises(ConfigError, match="outputs differ"):
        recover(copy.deepcopy(digits_cnn), Context(data=digits, teacher=other), Finetune(method="kd", epochs=1))


def test_drop_layers_keeps_the_chosen_blocks():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(4)])

        def forward(self, x):
            for m in self.layers:
                x = m(x)
            return x

    n = Net()
    keep = [n.layers[0], n.layers[3]]
    drop_layers(n, [0, 3])
    assert list(n.layers) == keep
    with pytest.raises(ConfigError):
        drop_layers(Net(), [0, 9])


@pytest.mark.slow
def test_kd_student_beats_the_same_student_trained_alone(digits_cnn, digits):
    accs = {}
    for method in ("plain", "kd"):
        ctx = Context(data=digits, teacher=digits_cnn, seed=0)
        s = distill_student(digits_cnn, StudentConfig(width=0.5, init="random", method=method, epochs=60), ctx)
        accs[method] = _acc(s, digits)
    assert accs["kd"] > accs["plain"], accs
