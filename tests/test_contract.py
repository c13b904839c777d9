"""Every registered technique, with its default config, on a zoo model: it runs through a recipe stage, leaves the
user's model alone, exports to ONNX that ONNX Runtime runs, and keeps accuracy."""
import copy

import numpy as np
import pytest
import torch

from slimkit.core import Context, list_techniques
from slimkit.export import ort_run, ort_session
from slimkit.export.onnx import export_artifact

TECHS = [t for t in list_techniques() if not t.name.startswith("test.")]
# accuracy floors without recovery; depthwise-separable conversion is a lossy re-parametrisation (refitted on
# calibration data, 96.7% here; the stage's fine-tune recovers the rest: its floor after recovery is in
# tests/factorize)
FLOOR = {"factorize.dsconv": 0.90}


def test_registry_lists_the_built_in_families():
    names = {t.name for t in TECHS}
    assert {"quantize.int8_static", "quantize.int8_dynamic", "quantize.qat", "quantize.mixed_precision"} <= names
    for t in TECHS:
        assert t.summary and t.config_cls().to_dict()["version"] >= 1


@pytest.mark.parametrize("tech", TECHS, ids=lambda t: t.name)
def test_technique_contract(tech, digits_mlp, digits_cnn, digits, tmp_path):
    cfg = tech.config_cls()
    # convolution-only techniques get the CNN, the rest the MLP
    conv_only = "Linear" not in getattr(getattr(cfg, "targets", None), "types", ["Linear"])
    digits_mlp = digits_cnn if conv_only else digits_mlp
    before = copy.deepcopy(digits_mlp.state_dict())
    if hasattr(cfg, "epochs"):
        cfg.epochs = 1  # keep the sweep fast; accuracy floors per technique live in their own tests
    if hasattr(cfg, "final_sparsity"):
        cfg.final_sparsity = 0.5
    if hasattr(cfg, "ratio"):
        cfg.ratio = 0.25  # structured removal without recovery; recovery has its own tests
    ctx = Context(data=digits, teacher=copy.deepcopy(digits_mlp).eval())
    for need in tech.needs:
        assert ctx.has(need)
    out = tech.apply(digits_mlp, cfg, ctx)
    for k, v in digits_mlp.state_dict().items():
        assert torch.equal(v, before[k])
    x = digits.test.inputs
    assert out(*x).shape == digits_mlp(*x).shape
    export_artifact(out, digits, tmp_path / "m.onnx")
    got = ort_run(ort_session(tmp_path / "m.onnx"), x)
    assert float((np.asarray(got).argmax(1) == digits.test.targets.numpy()).mean()) >= FLOOR.get(tech.name, 0.95)
