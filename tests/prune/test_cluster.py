import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from slimkit.core import Context
from slimkit.core.errors import ConfigError
from slimkit.distill.trainer import recover
from slimkit.export import export_onnx
from slimkit.pipeline.recipe import Finetune
from slimkit.prune import (ClusterConfig, GradualPruneConfig, cluster, gradual_prune, kmeans_1d, load_slim,
                           save_slim)


def test_kmeans_recovers_known_centroids():
    g = torch.Generator().manual_seed(0)
    true = torch.tensor([-2.0, -0.5, 0.7, 3.0])
    v = true[torch.randint(0, 4, (4000,), generator=g)] + 0.01 * torch.randn(4000, generator=g)
    for init in ("linear", "density"):
        c, a = kmeans_1d(v[None], 4, init=init)
        torch.testing.assert_close(c[0], true, atol=2e-3, rtol=0)
        assert torch.equal(c[0][a[0]].round(decimals=1), true[(v[:, None] - true).abs().argmin(1)].round(decimals=1))


@pytest.mark.parametrize("bits,per", [(2, "layer"), (4, "layer"), (3, "channel")])
def test_clustering_leaves_exactly_2_to_the_b_values(bits, per, digits_mlp, digits):
    before = copy.deepcopy(digits_mlp.state_dict())
    cm = cluster(digits_mlp, ClusterConfig(bits=bits, per=per), Context(data=digits))
    plain = cm.slimkit_finalize()
    for k, v in digits_mlp.state_dict().items():
        assert torch.equal(v, before[k])
    for mod in plain.modules():
        if isinstance(mod, nn.Linear):
            rows = mod.weight.reshape(mod.weight.shape[0], -1) if per == "channel" else mod.weight.reshape(1, -1)
            for r in rows:
                assert r.unique().numel() == 2 ** bits
    assert set(plain.state_dict()) == set(digits_mlp.state_dict())  # a plain model again, same keys


def test_centroid_finetune_keeps_sharing_and_zeros(digits_mlp, digits):
    m = copy.deepcopy(digits_mlp)
    with torch.no_grad():
        m.net[1].weight[:, :100] = 0  # pretend pruned
    ctx = Context(data=digits, teacher=digits_mlp)
    cm = cluster(m, ClusterConfig(bits=4), ctx)
    c0 = cm.model.net[1].parametrizations.weight[0].centroids.detach().clone()
    recover(cm, ctx, Finetune(method="kd", epochs=1, lr=1e-3))
    assert not torch.equal(c0, cm.model.net[1].parametrizations.weight[0].centroids.detach())
    plain = cm.slimkit_finalize()
    w = plain.net[1].weight
    assert (w[:, :100] == 0).all() and w[w != 0].unique().numel() <= 16


def test_cluster_bad_input(digits_mlp):
    for bits in (1, 9, 3.5):
        with pytest.raises(ConfigError, match="bits"):
            ClusterConfig(bits=bits)
    with pytest.raises(ConfigError, match="nothing to cluster"):
        cluster(digits_mlp, ClusterConfig(targets={"types": ["Conv2d"]}), Context())


@pytest.mark.slow
def test_deep_compression_digits_mlp(digits_mlp, digits, tmp_path):
    """prune 95% -> 4-bit sharing -> .slim: far smaller than the fp32 ONNX file, accuracy kept."""
    ctx = Context(data=digits, teacher=digits_mlp)
    p = gradual_prune(digits_mlp, GradualPruneConfig(final_sparsity=0.95, epochs=100, lr=0.01, augment="auto"), ctx)
    cm = cluster(p, ClusterConfig(bits=4), ctx)
    recover(cm, ctx, Finetune(method="kd", epochs=3, lr=5e-4, augment="auto"))
    final = cm.slimkit_finalize()
    export_onnx(digits_mlp, digits, tmp_path / "fp32.onnx")
    info = save_slim(final, tmp_path / "m.slim")
    ratio = (tmp_path / "fp32.onnx").stat().st_size / info["file_bytes"]
    assert ratio >= 35, ratio
    back = load_slim(tmp_path / "m.slim", copy.deepcopy(final))
    x = digits.test.inputs[0]
    with torch.no_grad():
        assert torch.equal(back(x), final(x))
        acc = float(np.mean(final(x).argmax(1).numpy() == digits.test.targets.numpy()))
    assert acc >= 0.985
