import copy

import pytest
import torch

import slimkit
from slimkit.core.errors import ConfigError


def test_family_calls_run_one_technique_and_leave_the_model_alone(digits_cnn, digits):
    before = copy.deepcopy(digits_cnn.state_dict())
    small = slimkit.prune(digits_cnn, {"type": "prune.structured", "ratio": 0.5}, digits)
    assert sum(p.numel() for p in small.parameters()) < 0.5 * sum(p.numel() for p in digits_cnn.parameters())
    f = slimkit.factorize(digits_cnn, slimkit.factorize.LowRankConfig(rank="ratio", ratio=0.5), digits)
    assert isinstance(f.classifier[1], torch.nn.Sequential)
    for k, v in digits_cnn.state_dict().items():
        assert torch.equal(v, before[k])


def test_family_call_errors(digits_cnn, digits):
    with pytest.raises(ConfigError, match="is a quantize technique"):
        slimkit.prune(digits_cnn, "quantize.int8_static", digits)
    with pytest.raises(ConfigError, match="needs a 'type'"):
        slimkit.prune(digits_cnn, {"ratio": 0.5}, digits)
    with pytest.raises(ConfigError, match="unknown technique type"):
        slimkit.prune(digits_cnn, {"type": "prune.nope"}, digits)
    with pytest.raises(ConfigError, match="needs train_data"):
        slimkit.distill(digits_cnn, {"type": "distill.train"})
