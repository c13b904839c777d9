import pytest

from slimkit.core import Context
from slimkit.core.errors import ConfigError
from slimkit.quantize import MixedPrecisionConfig, mixed_precision


def test_mixed_precision_meets_budget_and_stricter_budget_keeps_more_bits(digits_mlp, digits):
    loose = mixed_precision(digits_mlp, MixedPrecisionConfig(max_drop=0.01, min_sqnr_db=15), Context(data=digits))
    strict = mixed_precision(digits_mlp, MixedPrecisionConfig(max_drop=0.0, min_sqnr_db=30), Context(data=digits))
    for qm, budget in ((loose, (0.01, 15)), (strict, (0.0, 30))):
        info = qm.info
        assert info["measured_drop"] <= budget[0] and info["output_sqnr_db"] >= budget[1]
        assert len(info["sensitivity"]) == 4 and all("sqnr_db_int4" in r for r in info["sensitivity"])
    low = lambda qm: sum(b == 4 for b in qm.info["precision_plan"].values())  # noqa: E731
    assert low(loose) >= 1
    assert low(loose) >= low(strict)
    assert loose.info["effective_weight_bits"] <= strict.info["effective_weight_bits"]


def test_mixed_precision_rejects_auto_calibrator():
    with pytest.raises(ConfigError, match="pick one calibrator"):
        MixedPrecisionConfig(calibrator="auto")


def test_size_budget_is_met_and_4bit_weights_are_packed_on_disk(digits_mlp, digits, tmp_path):
    import numpy as np
    import onnx
    import onnxruntime as ort

    from slimkit.quantize.onnx_passes import unpack_low_bit_weights

    qm = mixed_precision(digits_mlp, MixedPrecisionConfig(target_size=0.2), Context(data=digits))
    info = qm.info
    assert info["weight_bytes_vs_fp32"] <= 0.2  # int8 everywhere would be 0.25
    assert any(b == 4 for b in info["precision_plan"].values())
    assert all("drop_alone_int8" in r for r in info["sensitivity"])
    packed, plain = tmp_path / "packed.onnx", tmp_path / "int8.onnx"
    qm.slimkit_export(digits, packed)
    assert info["packed_4bit_weights"] >= 1
    qm.info["pack_4bit"] = False
    qm.slimkit_export(digits, plain)
    n4 = sum(p * 1 for n, p in ((n, m.weight.numel()) for n, m in digits_mlp.named_modules()
                                  if n in info["precision_plan"] and info["precision_plan"][n] == 4))
    # half a byte saved per 4-bit weight (the re-expansion nodes cost a few hundred bytes)
    assert packed.stat().st_size <= plain.stat().st_size - 0.45 * n4
    m = onnx.load(packed)
    assert any(i.data_type == onnx.TensorProto.INT4 for i in m.graph.initializer)
    x = digits.test.inputs[0][:64].numpy()
    a = ort.InferenceSession(str(packed), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    feed = {a.get_inputs()[0].name: x}
    ya, yb = a.run(None, feed)[0], b.run(None, feed)[0]
    np.testing.assert_allclose(ya, yb, atol=1e-5)  # exact codes: same arithmetic as the int8 file
    assert unpack_low_bit_weights(m) == info["packed_4bit_weights"]
    c = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(c.run(None, feed)[0], ya, atol=1e-5)
    assert not any(i.data_type == onnx.TensorProto.INT4 for i in m.graph.initializer)


def test_size_budget_below_low_bits_everywhere_is_refused(digits_mlp, digits):
    with pytest.raises(ConfigError, match="raise target_size"):
        mixed_precision(digits_mlp, MixedPrecisionConfig(target_size=0.1), Context(data=digits))


def test_low_bits_8_keeps_float_only_the_layers_int8_hurts_most(digits_mlp, digits):
    """``low_bits: 8`` is the automatic float-layer choice (int8 or fp32 per layer, nothing lower): with a budget
    int8 everywhere misses, the layer whose float copy helps most stays float and the budget is met."""
    free = mixed_precision(digits_mlp, MixedPrecisionConfig(low_bits=8, max_drop=1.0, min_sqnr_db=0),
                           Context(data=digits))
    assert set(free.info["precision_plan"].values()) == {8}  # a loose budget: int8 everywhere
    assert not any("sqnr_db_int4" in r for r in free.info["sensitivity"])
    s0 = free.info["output_sqnr_db"]
    best = max(free.info["sensitivity"], key=lambda r: r["sqnr_db_int8_rest_this_fp32"])
    assert best["sqnr_db_int8_rest_this_fp32"] > s0
    goal = (s0 + best["sqnr_db_int8_rest_this_fp32"]) / 2
    qm = mixed_precision(digits_mlp, MixedPrecisionConfig(low_bits=8, max_drop=1.0, min_sqnr_db=goal),
                         Context(data=digits))
    plan = qm.info["precision_plan"]
    assert set(plan.values()) == {8, 32} and plan[best["layer"]] == 32
    assert qm.info["output_sqnr_db"] >= goal
