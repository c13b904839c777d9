import numpy as np
import pytest
import torch

from slimkit.core import Context
from slimkit.core.errors import ConfigError
from slimkit.export import ort_run, ort_session
from slimkit.quantize import DynamicQuantConfig, Int4WeightConfig, int4_weights, int8_dynamic
from slimkit.quantize.int4 import _pack, dq4, q4
from slimkit.quantize.onnx_passes import optimized_op_types


def test_q4_codes_groups_and_packing():
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    q, s = q4(w, 32)
    assert q.min() >= -8 and q.max() <= 7 and s.shape == (8, 2)
    err = (dq4(q, s, 32) - w).abs()
    assert err.max() <= s.max() * 1.01  # within one step even with clipping
    p = _pack(q.numpy())
    assert p.shape == (8, 32) and p.dtype == np.uint8
    lo, hi = (p & 15).astype(int) - 8, (p >> 4).astype(int) - 8
    assert (lo == q.numpy()[:, 0::2]).all() and (hi == q.numpy()[:, 1::2]).all()
    with pytest.raises(ConfigError, match="not divisible"):
        q4(torch.randn(4, 48), 32)
    with pytest.raises(ConfigError, match="group_size"):
        Int4WeightConfig(group_size=48)


def test_int4_file_is_about_half_of_int8_and_runs_matmulnbits(digits_mlp, digits, tmp_path):
    q8 = int8_dynamic(digits_mlp, DynamicQuantConfig(smoothquant_alpha=0), Context(data=digits))
    q8.slimkit_export(digits, tmp_path / "q8.onnx")
    q4m = int4_weights(digits_mlp, Int4WeightConfig(group_size=64), Context(data=digits))
    q4m.slimkit_export(digits, tmp_path / "q4.onnx")
    s8, s4 = (tmp_path / "q8.onnx").stat().st_size, (tmp_path / "q4.onnx").stat().st_size
    assert s4 < 0.65 * s8, (s4, s8)
    assert "MatMulNBits" in optimized_op_types((tmp_path / "q4.onnx").read_bytes())
    x = digits.test.inputs
    got = ort_run(ort_session(tmp_path / "q4.onnx"), x)
    np.testing.assert_allclose(got, q4m(*x).detach().numpy(), atol=1e-3, rtol=1e-3)
    acc_fp = (digits_mlp(*x).argmax(1) == digits.test.targets).float().mean().item()
    assert float((got.argmax(1) == digits.test.targets.numpy()).mean()) >= acc_fp - 0.02


def test_gptq_beats_round_to_nearest_on_the_output_error():
    from slimkit.quantize.int4 import dq4, gptq_q4, q4

    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 128, generator=g)
    # correlated inputs with uneven scales, as real activations are
    x = torch.randn(2048, 16, generator=g) @ torch.randn(16, 128, generator=g) + 0.1 * torch.randn(2048, 128, generator=g)
    h = x.double().T @ x.double()
    q_r, s_r = q4(w, 32)
    q_g, s_g = gptq_q4(w, h, 32)
    assert q_g.min() >= -8 and q_g.max() <= 7 and s_g.shape == (48, 4)
    err = lambda q, s: float((x @ (dq4(q, s, 32) - w).T).pow(2).mean())  # noqa: E731
    assert err(q_g, s_g) < 0.7 * err(q_r, s_r)


def test_gptq_act_order_keeps_contiguous_groups_and_beats_rtn_on_uneven_inputs():
    from slimkit.quantize.int4 import dq4, gptq_q4, q4

    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 128, generator=g)
    # correlated inputs in which a few channels carry most of the energy (outlier features)
    x = torch.randn(2048, 16, generator=g) @ torch.randn(16, 128, generator=g) + 0.1 * torch.randn(2048, 128, generator=g)
    x = x * torch.where(torch.arange(128) % 17 == 0, 10.0, 1.0)
    h = x.double().T @ x.double()
    q_r, s_r = q4(w, 32)
    q_a, s_a = gptq_q4(w, h, 32, act_order=True)
    assert q_a.min() >= -8 and q_a.max() <= 7 and s_a.shape == (32, 4)
    # static groups: the scales are the per-group scales of the original weights, in contiguous groups
    assert torch.allclose(s_a, s_r)
    err = lambda q, s: float((x @ (dq4(q, s, 32) - w).T).pow(2).mean())  # noqa: E731
    assert err(q_a, s_a) < 0.7 * err(q_r, s_r)
    # with outlier channels, taking them first beats GPTQ in plain column order
    assert err(q_a, s_a) < 0.5 * err(*gptq_q4(w, h, 32))


class _TokenNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(512, 128)
        self.fc = torch.nn.Linear(128, 6)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


def test_int4_embedding_rows_with_their_own_group_size(tmp_path):
    from slimkit.zoo.data import DataBundle, DataSplit

    torch.manual_seed(0)
    ids = torch.randint(0, 512, (64, 10))
    y = torch.randint(0, 6, (64,))
    data = DataBundle("tok", "classification", DataSplit(ids, y), DataSplit(ids[:32], y[:32]), num_classes=6)
    model = _TokenNet().eval()
    sizes, outs = {}, {}
    for eg in (0, 128):
        qm = int4_weights(model, Int4WeightConfig(group_size=32, embedding_group_size=eg), Context(data=data))
        assert qm.info["int4_embeddings"] == ["emb"]
        p = tmp_path / f"e{eg}.onnx"
        qm.slimkit_export(data, p)  # parity with the simulation is checked inside
        sizes[eg], outs[eg] = p.stat().st_size, ort_run(ort_session(p), (ids,))
        np.testing.assert_allclose(outs[eg], qm(ids).detach().numpy(), atol=1e-4)
    # one scale per 128-value row instead of four per row: 3 x 4 bytes saved on each of the 512 rows
    assert sizes[0] - sizes[128] >= 512 * 3 * 4 * 0.95
    with pytest.raises(ConfigError, match="embedding_group_size"):
        Int4WeightConfig(embedding_group_size=7)
