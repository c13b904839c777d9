"""NAS over the model's own structure: the ranges come from the model's channel groups and convolutions, the
candidate has exactly the drawn widths and kernel sizes, is initialised from the teacher and runs and exports."""
import copy

import numpy as np
import torch.nn as nn

import pytest
import torch

from slimkit.core import Context
from slimkit.core.errors import ConfigError
from slimkit.export import ort_run, ort_session
from slimkit.export.onnx import export_artifact
from slimkit.evaluate.macs import count_macs
from slimkit.prune import WidthSearchConfig, width_search
from slimkit.prune.kernels import max_steps, smaller_conv


def test_ranges_are_the_models_channel_groups_and_kernels(digits_cnn, digits):
    ranges = WidthSearchConfig.tunable_for(digits_cnn, digits.example_inputs(1))
    widths = {k: r for k, r in ranges.items() if k.startswith("widths.")}
    assert set(widths) == {"widths.features.0", "widths.features.4", "widths.classifier.1", "widths.classifier.3"}
    assert all(r.low == 0.25 and r.high == 1.0 for r in widths.values())
    # two 5x5 convolutions with padding 2: as is, 3x3 or 1x1
    assert {k: r.choices for k, r in ranges.items() if k.startswith("kernels.")} == {
        "kernels.features.0": (0, 1, 2), "kernels.features.4": (0, 1, 2)}


def _acc(model, digits):
    with torch.no_grad():
        return float(np.mean(model(*digits.test.inputs).argmax(1).numpy() == digits.test.targets.numpy()))


def test_smaller_kernels_keep_the_output_shape_and_the_centre_taps():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 6, 5, padding=2)
    with torch.no_grad():  # only the centre 3x3 of each kernel is non-zero: the 3x3 conversion is exact
        conv.weight.mul_(torch.nn.functional.pad(torch.ones(3, 3), (1, 1, 1, 1)))
    small = smaller_conv(conv, 1)
    x = torch.randn(2, 4, 9, 11, generator=g)
    assert small.kernel_size == (3, 3) and small.padding == (1, 1)
    torch.testing.assert_close(small(x), conv(x), atol=1e-5, rtol=1e-5)
    assert max_steps(nn.Conv2d(4, 4, 5, padding=1)) == 1  # 3x3 with padding 0; a 1x1 would grow the output
    assert max_steps(nn.Conv2d(4, 4, 5, padding=0)) == 0 and max_steps(nn.Conv2d(4, 4, 5, padding="same")) == 2
    assert max_steps(nn.Conv2d(4, 4, (1, 7), padding=(0, 3), dilation=2)) == 1  # 3 // 2: one step keeps the shape
    with pytest.raises(ConfigError, match="outside 1..0"):
        smaller_conv(nn.Conv2d(4, 4, 3, padding=0), 1)
    for c in (nn.Conv2d(4, 4, 5, padding=1), nn.Conv2d(4, 4, 5, padding="same"), nn.Conv1d(4, 4, 7, padding=3, stride=2),
              nn.Conv2d(4, 4, (1, 7), padding=(0, 3), dilation=2)):
        x = torch.randn(2, 4, 12) if isinstance(c, nn.Conv1d) else torch.randn(2, 4, 9, 13)
        assert smaller_conv(c, 1)(x).shape == c(x).shape


def test_shrunk_kernels_refitted_on_calibration_data_keep_accuracy_and_export(digits_cnn, digits, tmp_path):
    ex = digits.example_inputs(1)
    mode = digits_cnn.training
    steps = {"features.0": 1, "features.4": 1}
    ctx = Context(data=digits)
    fit = width_search(digits_cnn, WidthSearchConfig(kernels=steps), ctx)
    crop = width_search(digits_cnn, WidthSearchConfig(kernels=steps, refit_samples=0), Context(data=digits))
    assert fit.features[0].kernel_size == (3, 3) and fit.features[4].padding == (1, 1)
    assert count_macs(fit, ex) < 0.5 * count_macs(digits_cnn, ex) and digits_cnn.training == mode
    # measured: the centre crop alone 39.2%, refitted 100.0% (the original 99.7%), before any fine-tune
    assert _acc(fit, digits) >= 0.95 and _acc(fit, digits) > _acc(crop, digits) + 0.2
    rows = ctx.tables["Kernel sizes"]
    assert [r["kernel"] for r in rows] == ["5x5 -> 3x3", "5x5 -> 3x3"] and "->" in rows[0]["output error (crop -> refit)"]
    export_artifact(fit, digits, tmp_path / "k.onnx")
    got = ort_run(ort_session(tmp_path / "k.onnx"), digits.test.inputs)
    with torch.no_grad():
        np.testing.assert_allclose(got, fit(*digits.test.inputs).numpy(), atol=1e-4, rtol=1e-4)
    # widths and kernels together
    both = width_search(digits_cnn, WidthSearchConfig(widths={"features.4": 0.5}, kernels={"features.4": 2}), ctx)
    assert both.features[4].out_channels == 16 and both.features[4].kernel_size == (1, 1)
    with pytest.raises(ConfigError, match="not a convolution of this model"):
        width_search(digits_cnn, WidthSearchConfig(kernels={"classifier.1": 1}), ctx)
    with pytest.raises(ConfigError, match="whole number >= 0"):
        WidthSearchConfig(kernels={"features.0": -1})


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


def test_a_candidates_name_reads_its_kernels(digits_cnn, digits):
    from slimkit.pipeline.recipe import Step
    from slimkit.search.space import _label

    ranges = WidthSearchConfig.tunable_for(digits_cnn, digits.example_inputs(1))
    cfg = WidthSearchConfig(widths={k.split(".", 1)[1]: 0.5 for k in ranges if k.startswith("widths.")},
                            kernels={"features.0": 0, "features.4": 1})
    assert _label(Step("prune.widths", cfg), ranges) == "widths(0.5/0.5/0.5/0.5/k/k-2)"
