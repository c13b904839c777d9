"""NAS over the model's own channel widths: the ranges come from the model's channel groups, the candidate has
exactly the drawn widths, is initialised from the teacher and runs and exports."""
import copy

import pytest
import torch

from slimkit.core import Context
from slimkit.core.errors import ConfigError
from slimkit.export import ort_run, ort_session
from slimkit.export.onnx import export_artifact
from slimkit.prune import WidthSearchConfig, width_search


def test_ranges_are_the_models_channel_groups(digits_cnn, digits):
    ranges = WidthSearchConfig.tunable_for(digits_cnn, digits.example_inputs(1))
    assert set(ranges) == {"widths.features.0", "widths.features.4", "widths.classifier.1", "widths.classifier.3"}
    assert all(r.low == 0.25 and r.high == 1.0 for r in ranges.values())


def test_the_candidate_has_the_drawn_widths(digits_cnn, digits, tmp_path):
    ctx = Context(data=digits, teacher=copy.deepcopy(digits_cnn).eval())
    before = copy.deepcopy(digits_cnn.state_dict())
    cfg = WidthSearchConfig(widths={"features.0": 0.5, "classifier.1": 0.25})
    out = width_search(digits_cnn, cfg, ctx)
    c0, c4 = digits_cnn.features[0], digits_cnn.features[4]
    assert c0.out_channels == 16 and out.features[0].out_channels == 8
    assert out.features[4].out_channels == c4.out_channels  # a group not named stays whole
    assert out.classifier[1].out_features == 32  # 120 x 0.25 = 30, rounded up to a multiple of 8 (round_to)
    assert all(torch.equal(v, before[k]) for k, v in digits_cnn.state_dict().items())
    export_artifact(out, digits, tmp_path / "w.onnx")
    got = ort_run(ort_session(tmp_path / "w.onnx"), digits.test.inputs)
    assert got.shape == (len(digits.test), 10)
    # no widths: the model unchanged
    same = width_search(digits_cnn, WidthSearchConfig(), ctx)
    assert sum(p.numel() for p in same.parameters()) == sum(p.numel() for p in digits_cnn.parameters())
    with pytest.raises(ConfigError, match="unknown channel group.*this model's groups"):
        width_search(digits_cnn, WidthSearchConfig(widths={"conv9": 0.5}), ctx)
    with pytest.raises(ConfigError, match="must be in \\(0, 1\\]"):
        WidthSearchConfig(widths={"features.0": 1.5})
