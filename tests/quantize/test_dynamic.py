import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from slimkit.core import Context
from slimkit.core.errors import ConfigError
from slimkit.export import export_onnx, ort_run, ort_session
from slimkit.quantize import DynamicQuantConfig, int8_dynamic
from slimkit.quantize.onnx_passes import optimized_op_types


def test_dynamic_on_mlp_shrinks_runs_integer_and_keeps_accuracy(digits_mlp, digits, tmp_path):
    qm = int8_dynamic(digits_mlp, DynamicQuantConfig(smoothquant_alpha=0.5, smooth={"types": ["Linear"]}),
                      Context(data=digits))
    out, fp = tmp_path / "q.onnx", tmp_path / "fp.onnx"
    qm.slimkit_export(digits, out)
    export_onnx(digits_mlp, digits, fp)
    assert out.stat().st_size < 0.3 * fp.stat().st_size
    ops = optimized_op_types(out.read_bytes())
    assert {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger"} & set(ops), ops
    acc_fp = (digits_mlp(*digits.test.inputs).argmax(1) == digits.test.targets).float().mean().item()
    acc_q = float((ort_run(ort_session(out), digits.test.inputs).argmax(1) == digits.test.targets.numpy()).mean())
    assert acc_q >= acc_fp - 0.01
    # ONNX arithmetic equals the PyTorch simulation
    x = digits.test.slice(0, 50).inputs
    np.testing.assert_allclose(ort_run(ort_session(out, optimize=False), x), qm(*x).detach().numpy(), atol=1e-3)


class _Correlated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_int8_gptq_lowers_the_output_error_and_exports_its_exact_codes(tmp_path):
    from slimkit.zoo.data import DataBundle, DataSplit

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the weights too: the test order must not decide them
    model = _Correlated().eval()
    # correlated inputs with a few dominant directions, as real activations are
    x = torch.randn(512, 8, generator=g) @ torch.randn(8, 64, generator=g) + 0.05 * torch.randn(512, 64, generator=g)
    data = DataBundle("corr", "embedding", DataSplit(x[:256], None), DataSplit(x[256:], None))
    ref = model(x[256:]).detach()
    err = {}
    for on in (False, True):
        # 7-bit weights on every CPU: with "auto" a VNNI CPU takes full 8-bit weights, whose rounding error is 4x
        # smaller, and the activations' dynamic rounding then dominates the output error (measured: GPTQ left
        # 0.85x-0.91x of the error over seeds 0-4; the test asks 0.7x)
        qm = int8_dynamic(model, DynamicQuantConfig(gptq=on, smoothquant_alpha=0, per_token={"types": []},
                                                    weight_range="reduced"), Context(data=data))
        err[on] = float((qm(x[256:]).detach() - ref).pow(2).mean())
    assert err[True] < 0.7 * err[False], err  # held-out inputs, not the calibration ones
    lin = qm.model.fc1
    assert lin.w_scale is not None and torch.equal(torch.round(lin.weight / lin.w_scale[:, None]).abs().max(),
                                                   torch.tensor(float(lin.qmax)))
    out = tmp_path / "g.onnx"
    qm.slimkit_export(data, out)  # parity with the simulation is checked inside
    codes = [onnx.numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer if i.name.endswith("_Wq")]
    want = torch.round(lin.weight / lin.w_scale[:, None]).detach().numpy().T
    assert any(c.shape == want.shape and np.array_equal(c.astype(np.float32), want) for c in codes)
    np.testing.assert_allclose(ort_run(ort_session(out, optimize=False), (x[256:],)), qm(x[256:]).detach().numpy(),
                               atol=1e-4)
    with pytest.raises(ConfigError, match="gptq_damp"):
        DynamicQuantConfig(gptq_damp=2.0)


class _QKV(nn.Module):
    """Three projections of one LayerNorm output, as a transformer's query, key and value."""

    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(32)
        self.q, self.k, self.v = nn.Linear(32, 16), nn.Linear(32, 16), nn.Linear(32, 16)

    def forward(self, x):
        h = self.ln(x)
        return self.q(h) + self.k(h) * self.v(h)


@pytest.mark.parametrize("shared", [True, False])
def test_layers_reading_one_tensor_share_one_smoothing_scale_and_one_quantization(tmp_path, shared):
    from slimkit.zoo.data import DataBundle, DataSplit

    torch.manual_seed(0)
    model = _QKV().eval()
    with torch.no_grad():
        model.ln.weight[:4] = 20.0  # outlier channels: SmoothQuant has something to move
    x = torch.randn(256, 32)
    data = DataBundle("qkv", "embedding", DataSplit(x[:128], None), DataSplit(x[128:], None))
    cfg = DynamicQuantConfig(smooth={"include": ["q", "k", "v"], "types": ["Linear"]}, per_token={"types": []},
                             shared_smoothing=shared)
    qm = int8_dynamic(model, cfg, Context(data=data))
    inv = [qm.model.get_submodule(n).inv_smooth for n in "qkv"]
    assert all(torch.equal(inv[0], i) for i in inv) == shared
    out = tmp_path / "qkv.onnx"
    qm.slimkit_export(data, out)  # parity with the simulation is checked inside
    assert qm.info["shared_input_scalings_merged"] == (2 if shared else 0)
    ln_out = next(n.output[0] for n in onnx.load(out).graph.node if n.op_type == "LayerNormalization")
    scalings = [n for n in onnx.load(out).graph.node if n.op_type == "Mul" and n.input[0] == ln_out]
    assert len(scalings) == (1 if shared else 3)
    ops = optimized_op_types(out.read_bytes())  # ONNX Runtime quantizes the shared input once for all three
    assert ops.count("DynamicQuantizeLinear") + ops.count("DynamicQuantizeMatMul") == (1 if shared else 3), ops
    np.testing.assert_allclose(ort_run(ort_session(out, optimize=False), (x[128:],)), qm(x[128:]).detach().numpy(),
                               atol=1e-4)
    ref = model(x[128:]).detach()
    assert float((qm(x[128:]).detach() - ref).pow(2).mean() / ref.pow(2).mean()) < 1e-3


def test_shared_smoothing_groups_stay_within_one_block():
    from slimkit.quantize.dynamic import _act_absmax
    from slimkit.zoo.data import DataBundle, DataSplit

    torch.manual_seed(0)
    model = nn.Sequential(_QKV(), nn.Linear(16, 32), _QKV()).eval()  # two blocks with same-shaped inputs
    x = torch.randn(64, 32)
    data = DataBundle("qkv2", "embedding", DataSplit(x, None), DataSplit(x[:8], None))
    names = [f"{b}.{p}" for b in (0, 2) for p in "qkv"]
    _, groups = _act_absmax(model, names, data, 64)
    # the second block's input may reuse the memory of the first's: the groups are the tensors, not addresses
    assert sorted(map(sorted, groups)) == [["0.k", "0.q", "0.v"], ["2.k", "2.q", "2.v"]]


def test_keep_float_and_unknown_targets(digits_mlp, digits):
    qm = int8_dynamic(digits_mlp, DynamicQuantConfig(keep_float=["net.7"]), Context(data=digits))
    assert "net.7" in qm.info["float_layers"] and "net.1" in qm.info["quantized_layers"]
    with pytest.raises(ConfigError, match="do not exist"):
        int8_dynamic(digits_mlp, DynamicQuantConfig(targets={"include": ["net.42"]}), Context(data=digits))
    with pytest.raises(ConfigError, match="weight_range"):
        DynamicQuantConfig(weight_range="int3")


def test_full_range_layers_store_u8_weights_and_match_the_simulation(digits_mlp, digits, tmp_path):
    qm = int8_dynamic(digits_mlp, DynamicQuantConfig(weight_range="reduced", full_range=["net.1"]), Context(data=digits))
    assert qm.info["full_range_u8_layers"] == ["net.1"]
    out = tmp_path / "q.onnx"
    qm.slimkit_export(digits, out)
    m = onnx.load(out)
    u8 = [i for i in m.graph.initializer if i.name.endswith("_Wq") and i.data_type == onnx.TensorProto.UINT8]
    s8 = [i for i in m.graph.initializer if i.name.endswith("_Wq") and i.data_type == onnx.TensorProto.INT8]
    assert len(u8) == 1 and len(s8) == len(qm.info["quantized_layers"]) - 1  # net.1 at 8-bit u8, the rest 7-bit s8
    codes = onnx.numpy_helper.to_array(u8[0]).astype(np.int32) - 128
    assert np.abs(codes).max() > 63  # really uses the 8th bit
    x = digits.test.slice(0, 50).inputs
    np.testing.assert_allclose(ort_run(ort_session(out, optimize=False), x), qm(*x).detach().numpy(), atol=1e-3)
    # a finer grid on that layer: its weights' reconstruction error drops
    ref = int8_dynamic(digits_mlp, DynamicQuantConfig(weight_range="reduced"), Context(data=digits))

    def werr(q):
        from slimkit.quantize.dynamic import _wq
        layer = q.model.get_submodule("net.1")
        c, sc = _wq(layer.weight, layer.qmax, True)
        return float((c * sc[:, None] - layer.weight).detach().abs().mean())
    assert werr(qm) < 0.6 * werr(ref)


def test_smoothquant_preserves_float_function():
    from slimkit.quantize.dynamic import DynQuantLinear

    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    s = torch.rand(16) * 10 + 0.1
    dq = DynQuantLinear(lin, 127, True, s)
    dq.sim = False
    x = torch.randn(4, 16)
    torch.testing.assert_close(dq(x), lin(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_minilm_int8_fidelity_floor(minilm, sentences, minilm_ort_fidelity, tmp_path):
    qm = int8_dynamic(minilm, DynamicQuantConfig(), Context(data=sentences))
    out = tmp_path / "m.onnx"
    qm.slimkit_export(sentences, out)
    assert out.stat().st_size < 24e6  # from 90 MB fp32
    f = minilm_ort_fidelity(out)
    assert f["fidelity_cos_mean"] >= 0.99 and f["fidelity_cos_min"] >= 0.93
    m = onnx.load(str(out))
    assert sum(i.data_type == onnx.TensorProto.INT8 for i in m.graph.initializer) >= 36


class _SeqNet(nn.Module):
    def __init__(self, rnn="lstm"):
        super().__init__()
        self.rnn = (nn.LSTM if rnn == "lstm" else nn.GRU)(8, 64, batch_first=True)
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def test_lstm_becomes_ort_dynamic_quantize_lstm_and_gru_stores_int8(tmp_path):
    from slimkit.zoo.data import DataBundle, DataSplit

    torch.manual_seed(0)
    x = torch.randn(64, 12, 8)
    y = torch.randint(0, 5, (64,))
    data = DataBundle("seq", "classification", DataSplit(x, y), DataSplit(x[:32], y[:32]), num_classes=5)
    model = _SeqNet().eval()
    ctx = Context(data=data)
    qm = int8_dynamic(model, DynamicQuantConfig(), ctx)
    assert qm.info["int8_lstms"] == ["rnn"]
    qm.slimkit_export(data, tmp_path / "q.onnx")
    assert "DynamicQuantizeLSTM" in {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    export_onnx(model, data, tmp_path / "f.onnx")
    assert (tmp_path / "q.onnx").stat().st_size < 0.4 * (tmp_path / "f.onnx").stat().st_size
    got = ort_run(ort_session(tmp_path / "q.onnx"), (x,))
    ref = model(x).detach().numpy()
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.99
    # GRU: no int8 kernel in ONNX Runtime; int8 weights on disk, dequantized at run time, float recurrence
    gru = _SeqNet("gru").eval()
    gctx = Context(data=data)
    gq = int8_dynamic(gru, DynamicQuantConfig(), gctx)
    assert gq.info["int8_storage_grus"] == ["rnn"] and any("GRU weights stored as int8" in n for n in gctx.notes)
    gq.slimkit_export(data, tmp_path / "g.onnx")
    export_onnx(gru, data, tmp_path / "gf.onnx")
    g = onnx.load(str(tmp_path / "g.onnx")).graph
    gru_node = next(n for n in g.node if n.op_type == "GRU")
    producers = {o: n.op_type for n in g.node for o in n.output}
    assert producers[gru_node.input[1]] == "Reshape" and producers[gru_node.input[2]] == "Reshape"
    assert any(i.data_type == onnx.TensorProto.INT8 for i in g.initializer)
    assert (tmp_path / "g.onnx").stat().st_size < 0.45 * (tmp_path / "gf.onnx").stat().st_size
    got = ort_run(ort_session(tmp_path / "g.onnx"), (x,))
    np.testing.assert_allclose(got, gq(x).detach().numpy(), atol=1e-4)  # the same dequantized weights
    ref = gru(x).detach().numpy()
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.995
