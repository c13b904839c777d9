import dataclasses

import pytest
import torch
import torch.nn as nn

from slimkit.core import Config, ConfigError, Context, check_range, register_technique
from slimkit.pipeline import Recipe, check_needs, compress


@dataclasses.dataclass
class ScaleConfig(Config):
    factor: float = 1.0

    def validate(self):
        check_range("factor", self.factor, 0, 10, lo_open=True)


@register_technique("test.scale_last", ScaleConfig, summary="scale the last layer (test only)")
def _scale_last(model: nn.Module, cfg: ScaleConfig, ctx: Context) -> nn.Module:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(cfg.factor)
        last.bias.mul_(cfg.factor)
    ctx.note(f"scaled by {cfg.factor}")
    return model


@dataclasses.dataclass
class NeedyConfig(Config):
    pass


@register_technique("test.needs_teacher_and_calib", NeedyConfig, needs=("teacher", "calibration_data"))
def _needy(model, cfg, ctx):  # pragma: no cover - never reached in the test
    raise AssertionError("must not run")


YAML = """
version: 1
name: toy
seed: 3
stages:
  - name: scale
    techniques:
      - type: test.scale_last
        factor: 2.0
    finetune: {method: kd, epochs: 1, lr: 0.0005}
"""


def test_yaml_and_python_are_the_same_shape():
    r = Recipe.from_yaml(YAML)
    assert r.stages[0].techniques[0].config.factor == 2.0
    assert r.stages[0].finetune.method == "kd"
    again = Recipe.from_yaml(r.to_yaml())
    assert again.to_dict() == r.to_dict()
    py = Recipe.from_dict({"name": "toy", "seed": 3, "stages": [
        {"name": "scale", "techniques": [{"type": "test.scale_last", "factor": 2.0}],
         "finetune": {"method": "kd", "epochs": 1, "lr": 0.0005}}]})
    assert py.to_dict() == r.to_dict()


@pytest.mark.parametrize("text,msg", [
    ("stages:\n  - techniques:\n      - factor: 2\n", "explicit 'type:'"),
    ("stages:\n  - techniques:\n      - type: test.scale_last\n        factor: 0\n", "factor=0"),
    ("stages:\n  - techniques:\n      - type: test.scale_last\n        fctor: 2\n", "unknown field"),
    ("version: 9\nstages: []\n", "version 9"),
    ("stages: [\n", "not valid YAML"),
    ("stagez: []\n", "unknown key"),
    ("stages:\n  - name: a\n  - name: a\n", "duplicate stage"),
    ("stages:\n  - finetune: {method: magic}\n", "finetune.method"),
])
def test_bad_recipes_fail_clearly(text, msg):
    with pytest.raises(ConfigError, match=msg):
        Recipe.from_yaml(text)


def test_needs_checked_before_any_work(digits):
    r = Recipe.from_dict({"stages": [{"name": "a", "techniques": [{"type": "test.needs_teacher_and_calib"}]}]})
    with pytest.raises(ConfigError, match="needs teacher"):
        check_needs(r, Context(data=digits, teacher=None))
    check_needs(r, Context(data=digits, teacher=nn.Linear(1, 1)))  # satisfied: no error


def test_compress_runs_stages_records_metrics_and_leaves_model_untouched(digits_mlp, digits, tmp_path):
    before = {k: v.clone() for k, v in digits_mlp.state_dict().items()}
    res = compress(digits_mlp, Recipe.from_yaml(YAML), digits, out=tmp_path / "out", runs=20)
    for k, v in digits_mlp.state_dict().items():
        assert torch.equal(v, before[k]), "the user's model was mutated"
    st = res.report["stages"]
    assert st[0]["name"] == "scale" and st[0]["notes"] == ["scaled by 2.0"]
    assert st[0]["metrics"]["accuracy"] >= 0.95  # scaling logits keeps argmax; kd fine-tune keeps accuracy
    for f in ("model.onnx", "report.json", "report.md", "report.html", "recipe.yaml"):
        assert (tmp_path / "out" / f).is_file()
    assert Recipe.load(tmp_path / "out" / "recipe.yaml").to_dict() == Recipe.from_yaml(YAML).to_dict()
