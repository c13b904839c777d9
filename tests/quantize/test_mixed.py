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
