import numpy as np
import pytest
import torch
import torch.nn as nn

from slimkit.evaluate import Candidate, compare, count_macs, fidelity
from slimkit.evaluate.energy import energy_mj
from slimkit.zoo.models import LeNet5


def test_macs_of_known_layers_equal_hand_count():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, (torch.randn(1, 3, 10, 10),)) == 8 * 3 * 3 * 3 * 10 * 10
    lin = nn.Linear(20, 30)
    assert count_macs(lin, (torch.randn(1, 20),)) == 20 * 30
    seq = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2))
    assert count_macs(seq, (torch.randn(1, 3, 4),)) == 12 * 5 + 5 * 2


def test_fidelity_metrics():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 16))
    same = fidelity(ref, ref)
    assert same["fidelity_cos_mean"] == pytest.approx(1.0) and same["nn_top1"] == 1.0
    noisy = fidelity(ref + rng.normal(scale=2.0, size=ref.shape), ref)
    assert noisy["fidelity_cos_mean"] < 0.6 and noisy["nn_top1"] < 0.5


def test_energy_estimate_drops_with_int8():
    fp = energy_mj(1_000_000, 400_000, 0.0)
    q = energy_mj(1_000_000, 100_000, 1.0)
    assert q < fp / 3
    assert energy_mj(None, 10) is None


def test_bench_self_near_one_and_detects_slower_model(digits_cnn, digits, tmp_path):
    torch.manual_seed(0)
    wide = LeNet5(c1=96, c2=192, fc1=512, fc2=256).eval()
    res = compare([Candidate("a", digits_cnn), Candidate("b", digits_cnn), Candidate("wide", wide)], digits,
                  workdir=tmp_path, batch=64, runs=20, measure_memory=False)
    r_self, r_wide = res["ratios"]["b"], res["ratios"]["wide"]
    assert r_self["size_bytes"] == 1.0 and r_self["macs"] == 1.0
    assert 0.6 < r_self["latency_ms_p50_bN"] < 1.6
    assert 0.6 < r_self["torch_latency_ms_p50_bN"] < 1.6
    assert r_wide["macs"] > 20
    assert r_wide["latency_ms_p50_bN"] > 3 and r_wide["torch_latency_ms_p50_bN"] > 3
    assert any("WORSE" in v for v in res["verdicts"]["wide"])
    m = res["metrics"]["a"]
    for k in ("accuracy", "params", "macs", "size_bytes", "latency_ms_p50_b1", "latency_ms_p50_bN",
              "energy_mj_est", "torch_latency_ms_p50_b1"):
        assert m[k] is not None
    assert m["accuracy"] >= 0.99


def test_peak_memory_measured_in_child(digits_cnn, digits, tmp_path):
    res = compare([Candidate("m", digits_cnn)], digits, workdir=tmp_path, timing=False)
    m = res["metrics"]["m"]
    # a fresh onnxruntime process is tens of MB, far below this test process (torch loaded)
    assert 10e6 < m["peak_mem_bytes"] < 400e6
    assert m["peak_mem_delta_bytes"] > 0


def test_macs_count_recurrent_layers_the_flop_counter_cannot_see():
    import torch.nn as nn

    from slimkit.evaluate.macs import count_macs
    from slimkit.zoo.models import ConvRNN1D

    # LSTM: 4 gates x hidden x (input + hidden) per step, layer and direction
    lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True)
    assert count_macs(lstm, (torch.randn(5, 2, 8),)) == 5 * 2 * 2 * 4 * 16 * ((8 + 16) + (32 + 16))
    # GRU is decomposed into matmuls that torch's counter sees: counted once, not twice
    gru = nn.GRU(8, 16, batch_first=True)
    assert count_macs(gru, (torch.randn(2, 5, 8),)) == 2 * 5 * 3 * 16 * (8 + 16)
    # inside a model: conv front end + 2-layer LSTM + head
    assert count_macs(ConvRNN1D(), (torch.randn(1, 1, 40),)) == 32 * 5 * 20 + 20 * 4 * 64 * (96 + 128) + 64 * 10


def test_verdicts_flag_pytorch_timings_of_a_quantization_simulation():
    from slimkit.evaluate.compare import verdicts

    r = {"latency_ms_p50_b1": 0.6, "torch_latency_ms_p50_b1": 8.0, "size_bytes": 0.26}
    plain, sim = verdicts(r), verdicts(r, simulated=True)
    assert plain[1] == "PyTorch batch-1 latency: 8.00x the baseline (WORSE)"
    assert "fake-quant simulation" in sim[1] and "WORSE" in sim[1]
    assert sim[0] == plain[0] and sim[2] == plain[2]  # ONNX Runtime and size verdicts unchanged


def test_quantized_models_declare_their_pytorch_forward_a_simulation(digits_mlp, digits):
    from slimkit.core import Context
    from slimkit.quantize import DynamicQuantConfig, StaticQuantConfig, int8_dynamic, int8_static

    assert int8_dynamic(digits_mlp, DynamicQuantConfig(), Context(data=digits)).slimkit_simulated
    assert int8_static(digits_mlp, StaticQuantConfig(), Context(data=digits)).slimkit_simulated
    assert not getattr(digits_mlp, "slimkit_simulated", False)


def test_interleaved_timing_shuffles_the_order_each_round_with_a_seed():
    """Every runner runs once per round; the predecessor of a runner changes between rounds (a rotation would fix
    it), and the same seed gives the same order."""
    from slimkit.evaluate.latency import time_interleaved

    def orders(seed):
        calls = []
        runners = {k: (lambda k=k: calls.append(k)) for k in "abcde"}
        times = time_interleaved(runners, runs=40, warmup=0, desc=None, seed=seed)
        assert all(len(v) == 40 for v in times.values())
        return [calls[i:i + 5] for i in range(0, len(calls), 5)]

    rounds = orders(0)
    assert all(sorted(r) == list("abcde") for r in rounds)
    before_a = {r[r.index("a") - 1] for r in rounds if r.index("a") > 0}
    assert len(before_a) >= 3
    assert rounds == orders(0) and rounds != orders(1)


def test_paired_drop_counts_only_the_samples_on_which_the_two_disagree():
    from slimkit.core.data import DataBundle, DataSplit
    from slimkit.evaluate.metrics import paired_drop, sample_scores, task_metrics

    y = torch.arange(400) % 4
    data = DataBundle("toy", "classification", DataSplit(torch.zeros(400, 4), y), DataSplit(torch.zeros(400, 4), y))
    right = torch.nn.functional.one_hot(y, 4).float().numpy()
    base = right.copy()
    base[:40] = np.roll(base[:40], 1, axis=1)  # the original misses 40
    same = base.copy()
    traded = base.copy()
    traded[:4] = right[:4]  # 4 of its misses mended ...
    traded[100:104] = np.roll(right[100:104], 1, axis=1)  # ... and 4 new ones
    sb = sample_scores(base, data)
    assert sb.mean() == pytest.approx(task_metrics(base, data)["accuracy"])
    assert paired_drop(sb, sample_scores(same, data)) == (0.0, 0.0)  # same predictions: no noise at all
    drop, se = paired_drop(sb, sample_scores(traded, data))
    assert drop == 0.0
    # 8 disagreements of +-1 in 400: sd = sqrt(8/399), se = sd / sqrt(400)
    assert se == pytest.approx(np.sqrt(8 / 399) / 20)
    # embeddings: the cosine to the reference, sample by sample
    emb = DataBundle("e", "embedding", DataSplit(torch.zeros(3, 2), None), DataSplit(torch.zeros(3, 2), None))
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    got = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    np.testing.assert_allclose(sample_scores(got, emb, ref), [1.0, 0.0, 1.0], atol=1e-9)
