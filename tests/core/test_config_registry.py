import dataclasses

import pytest
import torch.nn as nn

from slimkit.core import Config, ConfigError, Targets, check_range, get_technique


@dataclasses.dataclass
class ToyConfig(Config):
    bits: int = 8
    targets: Targets = dataclasses.field(default_factory=Targets)

    def validate(self):
        check_range("bits", self.bits, 2, 8)


def test_config_validates_on_creation():
    with pytest.raises(ConfigError, match=r"bits=9 is outside \[2, 8\]"):
        ToyConfig(bits=9)


def test_config_round_trips_with_version():
    c = ToyConfig(bits=4, targets=Targets(include=["re:fc.*"], exclude=["fc3"]))
    d = c.to_dict()
    assert d["version"] == 1 and d["targets"]["include"] == ["re:fc.*"]
    c2 = ToyConfig.from_dict(d)
    assert c2 == c


def test_config_rejects_unknown_field_and_version():
    with pytest.raises(ConfigError, match="unknown field.*bitz"):
        ToyConfig.from_dict({"bitz": 3})
    with pytest.raises(ConfigError, match="version 7"):
        ToyConfig.from_dict({"bits": 3, "version": 7})


def test_unknown_technique_lists_known():
    with pytest.raises(ConfigError, match="unknown technique type 'nope'; known:"):
        get_technique("nope")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.norm = nn.LayerNorm(4)


def test_targets_select_by_type_name_regex_and_exclude():
    net = Net()
    names = lambda t: [n for n, _ in t.select(net)]  # noqa: E731
    assert names(Targets()) == ["conv", "fc1", "fc2", "head"]
    assert names(Targets(types=["Linear"], exclude=["head"])) == ["fc1", "fc2"]
    assert names(Targets(include=["re:^fc"])) == ["fc1", "fc2"]
    assert names(Targets(include=["head"])) == ["head"]
    assert names(Targets(include=["LayerNorm"], types=["LayerNorm"])) == ["norm"]


def test_targets_errors():
    with pytest.raises(ConfigError, match="do not exist: fc9"):
        list(Targets(include=["fc9"]).select(Net()))
    with pytest.raises(ConfigError, match="unknown layer type 'Dense'"):
        Targets(types=["Dense"])
    with pytest.raises(ConfigError, match="bad regex"):
        Targets(include=["re:(("])
