import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from slimkit.core import Context
from slimkit.core.errors import ConfigError
from slimkit.distill.trainer import recover
from slimkit.evaluate.macs import count_macs, count_params
from slimkit.export import export_onnx
from slimkit.factorize import (DSConvConfig, LowRankConfig, depthwise_separable, dsconv, lowrank, rank_for_energy,
                               spatial_svd_conv, svd_linear, tucker2_conv)
from slimkit.pipeline.recipe import Finetune


def _err(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def test_svd_of_a_known_low_rank_matrix_is_exact():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(40, 30)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(30, 5, generator=g) @ torch.randn(5, 40, generator=g))
    f = svd_linear(lin, 5)
    x = torch.randn(8, 40, generator=g)
    torch.testing.assert_close(f(x), lin(x), atol=1e-4, rtol=1e-4)
    assert count_params(f) == 5 * (40 + 30) + 30
    assert count_macs(f, (x[:1],)) == 5 * (40 + 30)


def test_full_rank_is_exact_and_error_grows_as_rank_drops():
    torch.manual_seed(0)
    lin, x = nn.Linear(32, 24), torch.randn(16, 32)
    errs = [_err(svd_linear(lin, r)(x), lin(x)) for r in (24, 16, 8, 4, 1)]
    assert errs[0] < 1e-5 and all(b >= a - 1e-7 for a, b in zip(errs, errs[1:]))

    conv, xi = nn.Conv2d(8, 12, 3, padding=1, stride=2), torch.randn(2, 8, 9, 9)
    errs = [_err(tucker2_conv(conv, r, min(r, 8))(xi), conv(xi)) for r in (12, 8, 4, 2)]
    assert errs[0] < 1e-5 and all(b >= a - 1e-7 for a, b in zip(errs, errs[1:]))
    errs = [_err(spatial_svd_conv(conv, r)(xi), conv(xi)) for r in (24, 12, 6, 2)]
    assert errs[0] < 1e-5 and all(b >= a - 1e-7 for a, b in zip(errs, errs[1:]))

    conv1, x1 = nn.Conv1d(4, 16, 5, padding=2), torch.randn(2, 4, 20)
    torch.testing.assert_close(tucker2_conv(conv1, 16, 4)(x1), conv1(x1), atol=1e-5, rtol=1e-4)


def test_tucker_ranks_that_bound_each_other_are_trimmed_not_a_crash():
    """Asking (16, 4) of a Conv1d(12 -> 16, k=3) (a pruned layer in a planner trial): the output factor comes from
    an (o, r_in * k) = (16, 12) unfolding, so rank 16 has no vectors to fill it; the factorization keeps 12 and
    still runs, close to the layer."""
    torch.manual_seed(0)
    conv, x = nn.Conv1d(12, 16, 3, padding=1), torch.randn(4, 12, 30)
    f = tucker2_conv(conv, 16, 4)
    assert f[1].out_channels == 12 and f[1].in_channels == 4
    assert f(x).shape == conv(x).shape
    low = tucker2_conv(conv, 3, 12)  # the other way round: r_in <= r_out * k = 9
    assert low[1].in_channels == 9 and low(x).shape == conv(x).shape
    full = tucker2_conv(conv, 16, 12)
    torch.testing.assert_close(full(x), conv(x), atol=1e-4, rtol=1e-4)


def test_depthwise_separable_is_exact_for_a_separable_kernel_and_exports(tmp_path):
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(6, 10, 3, padding=1)
    with torch.no_grad():  # W[o, c] = P[o, c] * D[c]: exactly depthwise-separable
        conv.weight.copy_(torch.randn(10, 6, 1, 1, generator=g) * torch.randn(1, 6, 3, 3, generator=g))
    ds = depthwise_separable(conv)
    x = torch.randn(3, 6, 8, 8, generator=g)
    torch.testing.assert_close(ds(x), conv(x), atol=1e-5, rtol=1e-4)
    assert ds[0].groups == 6 and ds[1].kernel_size == (1, 1)
    assert count_macs(ds, (x[:1],)) < count_macs(conv, (x[:1],))
    from slimkit.zoo.data import DataBundle, DataSplit

    data = DataBundle("toy", "classification", None, DataSplit(x, torch.zeros(3, dtype=torch.long)))
    assert export_onnx(nn.Sequential(ds, nn.Flatten()), data, tmp_path / "ds.onnx").ok


def test_rank_for_energy():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert rank_for_energy(s, 16 / 22) == 1 and rank_for_energy(s, 0.9) == 2 and rank_for_energy(s, 1.0) == 4


def test_lowrank_bad_input(digits_cnn, digits):
    lin = nn.Linear(8, 4)
    for r in (0, 5):
        with pytest.raises(ConfigError, match="rank"):
            svd_linear(lin, r)
    with pytest.raises(ConfigError, match="larger than its full rank"):
        lowrank(digits_cnn, LowRankConfig(rank="ratio", ranks={"classifier.3": 500}), Context(data=digits))
    with pytest.raises(ConfigError, match="not a factorizable layer"):
        lowrank(digits_cnn, LowRankConfig(rank="ratio", ranks={"nope": 3}), Context(data=digits))
    with pytest.raises(ConfigError, match="cannot be met"):
        lowrank(digits_cnn, LowRankConfig(rank="auto", target=0.99, linear="none"), Context(data=digits))
    with pytest.raises(ConfigError):
        LowRankConfig(rank="magic")


def test_lowrank_ratio_replaces_only_where_cheaper_and_keeps_the_user_model(digits_cnn, digits):
    before = copy.deepcopy(digits_cnn.state_dict())
    ctx = Context(data=digits)
    f = lowrank(digits_cnn, LowRankConfig(rank="ratio", ratio=0.25), ctx)
    for k, v in digits_cnn.state_dict().items():
        assert torch.equal(v, before[k])
    ex = digits.example_inputs(1)
    assert count_macs(f, ex) < count_macs(digits_cnn, ex) and count_params(f) < count_params(digits_cnn)
    assert isinstance(f.features[4], nn.Sequential) and isinstance(f.classifier[1], nn.Sequential)
    ctx = Context(data=digits)
    lowrank(digits_cnn, LowRankConfig(rank="ratio", ratio=0.9), ctx)
    left = {r["layer"] for r in ctx.tables["Low-rank factorization: layers left alone"]}
    assert "classifier.5" in left  # rank 9 of 10: two Linear layers would cost more than one
    x = digits.test.inputs[0][:8]
    assert f(x).shape == digits_cnn(x).shape


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lowrank", "dsconv"])
def test_factorized_cnn_recovers_with_kd(kind, digits_cnn, digits):
    ctx = Context(data=digits, teacher=digits_cnn)
    ex = digits.example_inputs(1)
    if kind == "lowrank":
        f = lowrank(digits_cnn, LowRankConfig(rank="auto", target=0.4), ctx)
    else:
        f = dsconv(digits_cnn, DSConvConfig(), ctx)
    assert count_macs(f, ex) <= 0.6 * count_macs(digits_cnn, ex)
    recover(f, ctx, Finetune(method="kd", epochs=10, lr=0.002))
    with torch.no_grad():
        acc = float(np.mean(f(digits.test.inputs[0]).argmax(1).numpy() == digits.test.targets.numpy()))
    assert acc >= 0.985


def test_dsconv_refit_on_calibration_data_beats_the_weight_space_fit(digits_cnn, digits):
    def acc(f):
        with torch.no_grad():
            return float(np.mean(f(digits.test.inputs[0]).argmax(1).numpy() == digits.test.targets.numpy()))

    ctx = Context(data=digits)
    aware = dsconv(digits_cnn, DSConvConfig(), ctx)
    plain = dsconv(digits_cnn, DSConvConfig(data_aware=False), Context(data=digits))
    row = ctx.tables["Depthwise-separable conversion"][0]
    before, after = (float(v) for v in row["output error (weight fit -> refit)"].split(" -> "))
    assert after < 0.9 * before
    assert acc(aware) >= 0.93 and acc(aware) > acc(plain) + 0.05  # measured: 0.967 vs 0.792
    # the refit touches only the pointwise half: the depthwise kernels are the weight-space fit's
    torch.testing.assert_close(aware.features[4][0].weight, plain.features[4][0].weight)


def test_data_aware_svd_minimises_the_output_error():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(32, 32)
    scale = torch.ones(32)
    scale[:4] = 30.0  # a few outlier input channels, as after a transformer LayerNorm
    x = torch.randn(512, 32, generator=g) * scale
    cov = x.double().T @ x.double()
    plain, aware = svd_linear(lin, 8), svd_linear(lin, 8, cov)
    assert _err(aware(x), lin(x)) < 0.8 * _err(plain(x), lin(x))
    torch.testing.assert_close(svd_linear(lin, 32, cov)(x), lin(x), atol=1e-3, rtol=1e-3)


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 64)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True), 1)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def test_lowrank_reaches_the_projections_of_multihead_attention(tmp_path):
    """nn.MultiheadAttention reads its packed in_proj weight itself, so no Linear of it was a candidate and lowrank-auto
    refused nn.TransformerEncoder models ("cannot be met by factorization"); split into four Linear layers (the same
    function), its projections are factorized like any other, and the model still exports with parity."""
    from slimkit.core.data import DataBundle, DataSplit
    from slimkit.export.onnx import export_artifact

    torch.manual_seed(0)
    model = _Encoder().eval()
    attn = model.encoder.layers[0].self_attn
    with torch.no_grad():  # projections of rank 8: a rank-16 factorization must keep the function exactly
        attn.in_proj_weight.copy_(torch.cat([torch.randn(64, 8) @ torch.randn(8, 64) / 8 for _ in range(3)]))
        attn.out_proj.weight.copy_(torch.randn(64, 8) @ torch.randn(8, 64) / 8)
    x = torch.randn(64, 10, 16)
    split = DataSplit(x, torch.randint(0, 3, (64,)))
    data = DataBundle("seq", "classification", split, split, num_classes=3)
    before = copy.deepcopy(model.state_dict())
    ctx = Context(data=data)
    f = lowrank(model, LowRankConfig(rank="ratio", ratio=0.25), ctx)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and not model.training
    names = {n for n, m in f.named_modules() if isinstance(m, nn.Sequential)}
    assert {"encoder.layers.0.self_attn.q_proj", "encoder.layers.0.self_attn.out_proj"} <= names, names
    assert count_params(f) < 0.6 * count_params(model)
    attn_only = lowrank(model, LowRankConfig(rank="ratio", ratio=0.25, targets={"include": ["re:.*self_attn.*"]}),
                        Context(data=data))
    assert {n for n, m in attn_only.named_modules() if isinstance(m, nn.Sequential)} == {
        f"encoder.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    with torch.no_grad():
        assert _err(attn_only(x), model(x)) < 1e-4  # rank 16 >= the projections' rank 8: the same function
    export_artifact(f, data, tmp_path / "f.onnx")
