"""The per-layer sensitivity driver every budgeted technique shares (evaluate.sensitivity)."""
import copy

import pytest
import torch

from slimkit.core.errors import ConfigError
from slimkit.evaluate.sensitivity import DropMeter, Step, greedy_levels, measure, within_budget


def test_measure_repeats_a_level_the_probe_skips_and_allocates_the_cheapest_steps():
    # unit "a" is cheap to cut (little drop per saving), "b" is expensive; b's second level rounds to its first
    drops = {"a": [0.01, 0.02], "b": [0.10, None]}
    saves = {"a": [0.2, 0.4], "b": [0.3, None]}

    def probe(u, j):
        if drops[u][j] is None:
            return None
        return Step(drops[u][j], saves[u][j], {"unit": u, "level": j}, option=f"{u}{j}")

    s = measure(["a", "b"], [0, 1], probe, "test")
    assert s.cost["b"] == [(0.0, 0.0), (0.10, 0.3), (0.10, 0.3)]  # the skipped level costs what the one before did
    assert s.options["b"] == [None, "b0", "b0"]
    assert [r["unit"] for r in s.table] == ["a", "a", "b"]  # one row per measured level, none for the skipped one

    def additive(level):
        return sum(s.cost[u][j][1] for u, j in level.items())

    assert s.allocate(0.4, additive, "short {got:.0%}") == {"a": 2, "b": 0}  # "a" alone reaches it, at less drop
    assert s.allocate(0.6, additive, "short {got:.0%}") == {"a": 2, "b": 1}
    with pytest.raises(ConfigError, match="short 70%"):
        s.allocate(0.9, additive, "short {got:.0%}")


def test_greedy_keeps_going_when_the_measured_saving_falls_short_of_the_predicted():
    cost = {"a": [(0, 0), (0.0, 0.5)], "b": [(0, 0), (0.1, 0.5)]}
    # coupled layers: cutting "a" alone really saves only 0.2, so "b" must be cut too
    level, got = greedy_levels(cost, 0.5, lambda lv: 0.2 * lv["a"] + 0.5 * lv["b"])
    assert level == {"a": 1, "b": 1} and got == pytest.approx(0.7)


def test_within_budget_takes_gain_per_cost_while_it_fits():
    gain = {"big": (10.0, 10.0), "dense": (4.0, 2.0), "useless": (0.0, 0.5), "worse": (-1.0, 0.1)}
    assert within_budget(gain, 11.0) == ["dense"]  # "big" no longer fits after "dense"
    assert within_budget(gain, 12.0) == ["dense", "big"]
    assert within_budget(gain, 1.0) == []


def test_drop_meter_scores_in_eval_mode_and_gives_modes_back(digits, digits_mlp):
    model = copy.deepcopy(digits_mlp).train()
    meter = DropMeter(model, digits, 128, seed=0)
    assert model.training and len(meter.split) == 128
    drop, sqnr = meter(model)
    assert drop == 0.0 and sqnr > 100 and model.training
    broken = copy.deepcopy(digits_mlp)
    with torch.no_grad():
        for p in broken.parameters():
            p.mul_(0.0)  # every output the same: chance accuracy
    drop, sqnr = meter(broken)
    assert drop > 0.5 and sqnr < 1
    # decided on training samples, never the test split
    tr = {r.numpy().tobytes() for r in digits.train.inputs[0]}
    assert all(r.numpy().tobytes() in tr for r in meter.split.inputs[0])
