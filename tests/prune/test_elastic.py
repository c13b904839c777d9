"""The Once-for-All-style elastic network: masked widths are the pruned sub-networks, training makes narrow ones work
without retraining, and the user's model is never touched."""
import copy

import pytest
import torch

from slimkit.core import Context
from slimkit.core.errors import ConfigError
from slimkit.prune.elastic import ElasticConfig, Supernet


def _acc(model, split) -> float:
    with torch.no_grad():
        return float((model(*split.inputs).argmax(1) == split.targets).float().mean())


def test_a_masked_width_computes_what_the_cut_out_sub_network_computes(digits_cnn, digits):
    sn = Supernet(digits_cnn, digits.example_inputs(2))
    shares = {g: w for g, w in zip(sn.groups, (0.5, 0.25, 0.75, 0.375))}
    sn.set_widths(shares)
    sub = sn.extract(shares)  # no data: the supernet's BatchNorm statistics as they are
    x = digits.test.inputs
    with torch.no_grad():
        assert torch.allclose(sn.net(*x), sub(*x), atol=1e-5)
    assert sum(p.numel() for p in sub.parameters()) < 0.5 * sum(p.numel() for p in digits_cnn.parameters())
    assert [sub.get_submodule(sn.names[g].split("+")[0]).weight.shape[0] for g in sn.groups] == \
        list(sn.counts(shares).values())
    assert not any(m._forward_pre_hooks for m in sub.modules())  # a plain module, not the elastic one


def test_elastic_training_makes_narrow_sub_networks_work_without_retraining(digits_cnn, digits):
    before = {k: v.clone() for k, v in digits_cnn.state_dict().items()}
    mode = digits_cnn.training
    cfg = ElasticConfig(epochs=6)
    cold = Supernet(digits_cnn, digits.example_inputs(2), cfg)
    narrow = {g: 0.25 for g in cold.groups}
    acc_cold = _acc(cold.extract(narrow, digits), digits.test)
    sn = Supernet(digits_cnn, digits.example_inputs(2), cfg).train(
        Context(data=digits, teacher=copy.deepcopy(digits_cnn).eval()))
    split = digits.test
    acc = {w: _acc(sn.extract({g: w for g in sn.groups}, digits), split) for w in (0.25, 0.5, 1.0)}
    assert acc[0.25] >= 0.85 and acc[0.25] > acc_cold + 0.2, (acc, acc_cold)
    assert acc[1.0] >= 0.9 and acc[0.5] >= 0.9, acc
    assert digits_cnn.training == mode
    assert all(torch.equal(v, before[k]) for k, v in digits_cnn.state_dict().items())


def test_elastic_refuses_a_model_without_channel_groups_and_bad_shares(digits):
    import torch.nn as nn

    lin = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))  # its only layer reaches the output
    with pytest.raises(ConfigError, match="no channel group"):
        Supernet(lin, digits.example_inputs(2))
    with pytest.raises(ConfigError, match="min_width"):
        ElasticConfig(min_width=0.0)


def test_the_elastic_technique_trains_its_supernet_once_and_cuts_candidates_out_of_it(digits_cnn, digits, monkeypatch,
                                                                                    tmp_path):
    """``prune.elastic``: the first candidate trains the supernet and caches it (a state dict, read back with
    weights_only); the next ones are cut out of it without training; the planner's ranges are the channel groups."""
    import slimkit.prune.elastic as E
    from slimkit.core.registry import get_technique

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(E, "_TRAINED", {})
    ranges = E.ElasticWidthsConfig.tunable_for(digits_cnn, digits.example_inputs(1))
    assert set(ranges) == {"widths.features.0", "widths.features.4", "widths.classifier.1", "widths.classifier.3"}
    ctx = Context(data=digits, teacher=copy.deepcopy(digits_cnn).eval())
    cfg = E.ElasticWidthsConfig(epochs=3, widths={"features.0": 0.5, "classifier.1": 0.25})
    trained = []
    real_train = E.Supernet.train
    monkeypatch.setattr(E.Supernet, "train", lambda self, c: trained.append(1) or real_train(self, c))
    a = get_technique("prune.elastic").apply(digits_cnn, cfg, ctx)
    assert trained == [1] and len(list((tmp_path / "elastic").glob("*.pt"))) == 1
    monkeypatch.setattr(E, "_TRAINED", {})  # a new process: the cache file, not the memory
    b = get_technique("prune.elastic").apply(digits_cnn, E.ElasticWidthsConfig(epochs=3, widths={"features.4": 0.25}),
                                             ctx)
    assert trained == [1]  # not trained again
    assert a.features[0].out_channels < digits_cnn.features[0].out_channels
    assert b.features[4].out_channels < digits_cnn.features[4].out_channels
    assert _acc(a, digits.test) >= 0.9 and _acc(b, digits.test) >= 0.9
    with pytest.raises(ConfigError, match="unknown channel group"):
        get_technique("prune.elastic").apply(digits_cnn, E.ElasticWidthsConfig(epochs=3, widths={"nope": 0.5}), ctx)
