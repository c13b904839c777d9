"""The planner (`slimkit optimize`): a real study on a zoo model, its outputs, resume after SIGKILL, two workers on
one journal, and the refusals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slimkit.cli import app
from slimkit.core.errors import ConfigError
from slimkit.search.planner import choose, optimize, parse_budget, pareto_front, pick_variants
from slimkit.search.space import SearchSpace

SPACE = {"prune.structured": {"target_macs": [0.3, 0.6], "allocation": "uniform"}, "finetune": {"epochs": [2, 6]}}
CLI_SPACE = "{prune.structured: {target_macs: [0.3, 0.6], allocation: uniform}, finetune: {epochs: [2, 4]}}"


@pytest.fixture(scope="module")
def study(tmp_path_factory, digits_cnn, digits):
    out = tmp_path_factory.mktemp("opt") / "o"
    res = optimize(digits_cnn, digits, out=out, trials=4, objective="latency_bN", space=SPACE, references=False,
                   variants=2, seed=0, model_spec="zoo:digits-cnn")
    return out, res


def test_space_comes_from_the_registry():
    from slimkit.core.registry import get_technique, list_techniques

    sp = SearchSpace.from_registry()
    held = {c.technique for _, choices in sp.slots for c in choices}
    assert held == {t.name for t in list_techniques() if t.config_cls.TUNABLE is not None}
    assert [s for s, _ in sp.slots] == ["prune", "factorize", "quantize"]
    # other runtimes: the quantizers that lower there (static int8) stay, the ONNX-only ones go; a candidate
    # without a quantizer draws the runtime's own precision
    lite = SearchSpace.from_registry(runtime="litert")
    ort_q = {c.technique for c in dict(sp.slots)["quantize"]}
    lite_q = {c.technique for c in dict(lite.slots)["quantize"]}
    assert "quantize.int8_static" in lite_q and lite_q == {n for n in ort_q if get_technique(n).exports_to("litert")}
    assert "quantize.int8_dynamic" in lite_q and not any("int4" in n for n in lite_q)  # LiteRT: dynamic range only
    assert lite.precisions == ("fp32", "int8")
    # a runtime that can time layers also draws int8 only where it is faster there; ONNX Runtime does not
    lite_static = next(c for c in dict(lite.slots)["quantize"] if c.technique == "quantize.int8_static")
    assert lite_static.ranges["int8_where_faster"].choices == ("", "litert")
    assert "int8_where_faster" not in next(c for c in dict(sp.slots)["quantize"]
                                           if c.technique == "quantize.int8_static").ranges
    with pytest.raises(ConfigError, match="unknown technique 'prune.structurd'.*did you mean"):
        SearchSpace.from_registry(["prune.structurd"])
    with pytest.raises(ConfigError, match="has no field"):
        SearchSpace.from_registry({"prune.structured": {"target_mac": [0.1, 0.2]}})
    sp = SearchSpace.from_registry(CLI_SPACE)  # the CLI's inline mapping
    assert [c.technique for _, cs in sp.slots for c in cs] == ["prune.structured"]
    assert sp.finetune["epochs"].low == 2 and sp.finetune["epochs"].high == 4


def test_one_value_for_a_per_layer_field_sets_each_layer_and_skips_models_with_none(digits_mlp, digits_cnn, digits):
    """``{prune.widths: {kernels: 0}}`` fixes every convolution's kernel where there are some (digits-cnn) and sets
    nothing on a model without any (an MLP): a scalar must never land in a per-layer mapping field (it made every
    trial of an HF MobileNetV2 study fail with "kernels: expected a mapping")."""
    for model, has_kernels in ((digits_cnn, True), (digits_mlp, False)):
        sp = SearchSpace.from_registry({"prune.widths": {"kernels": 0}}, model=model,
                                       example=digits.example_inputs(1))
        ranges = dict(sp.slots)["prune"][0].ranges
        assert "kernels" not in ranges
        kernels = {k: t for k, t in ranges.items() if k.startswith("kernels.")}
        assert bool(kernels) == has_kernels and all(t.choices == (0,) for t in kernels.values())


def test_a_study_chooses_a_smaller_faster_model_on_validation_and_states_test(study, digits_cnn):
    out, res = study
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert sorted(t["number"] for t in trials) == list(range(4))
    done = [t for t in trials if t["state"] == "COMPLETE"]
    assert done, trials
    best = res.best
    assert best is not None and best["feasible"] and best["drop_pt"] <= 0.5
    # the default noise margin: two standard errors of the paired validation drop are added before the budget
    assert best["drop_pt"] + 2 * best["val_drop_se_pt"] <= 0.5 + 1e-9
    for t in done:
        assert t["judged_drop_pt"] == pytest.approx(t["drop_pt"] + 2 * t["val_drop_se_pt"])
        assert t["feasible"] == (t["judged_drop_pt"] <= 0.5 + 1e-9)
        assert t["feasible"] or "drop" in t["why_infeasible"]
    # the choice is the feasible trial with the lowest objective, decided on validation figures
    feasible = [t for t in done if t["feasible"]]
    assert best["ratios"]["latency_bN"] == min(t["ratios"]["latency_bN"] for t in feasible)
    assert best["macs"] < 0.75 * json.loads((out / "trials.json").read_text())["original"]["macs"]
    # best/ is a complete compress output of the chosen recipe, rebuilt identically: the test accuracy the trial
    # stated is the one compress measures on the artifact
    rep = json.loads((out / "best" / "report.json").read_text())
    assert {"model.onnx", "report.html", "recipe.yaml", "report.md"} <= {p.name for p in (out / "best").iterdir()}
    assert rep["compressed"]["accuracy"] == pytest.approx(best["test"], abs=1e-9)
    assert rep["compressed"]["accuracy"] >= 0.95
    assert rep["compressed"]["macs"] < rep["baseline"]["macs"]
    assert rep["pareto"] and rep["objective"] == "latency_bN" and rep["planner"]["chosen"] == best["number"]
    from slimkit.pipeline.recipe import Recipe

    assert Recipe.load(out / "best" / "recipe.yaml").to_dict()["stages"] == best["recipe"]["stages"]
    # the front is not dominated, on the figures it was chosen by
    front = json.loads((out / "pareto.json").read_text())["front"]
    for a in front:
        assert not any(b["val"] >= a["val"] and b["ratios"]["latency_bN"] < a["ratios"]["latency_bN"] for b in done)
    assert digits_cnn.training is False  # the user's model keeps the eval mode it came in with
    assert all(not p.name.startswith(".slimkit-tmp") for p in out.iterdir())


def test_variants_and_manifest(study):
    out, res = study
    man = json.loads((out / "variants" / "manifest.json").read_text())
    assert (out / "variants" / "selector.py").is_file()
    vs = man["variants"]
    assert 1 <= len(vs) <= 2
    import onnxruntime as ort
    import numpy as np

    for v in vs:
        sess = ort.InferenceSession(str(out / "variants" / v["file"]), providers=["CPUExecutionProvider"])
        y = sess.run(None, {sess.get_inputs()[0].name: np.zeros(v["input_shape"], np.float32)})[0]
        assert y.shape == (1, 10)
        assert v["value"] > 0.9 and v["size_bytes"] > 0 and v["latency_ms_p50_b1"] > 0


def test_pick_variants_spreads_along_layers():
    rows = [{"state": "COMPLETE", "number": i, "val": v, "objective_value": o}
            for i, (v, o) in enumerate([(1.0, 0.3), (0.99, 0.2), (0.98, 0.25), (0.97, 0.1), (0.9, 0.5)])]
    front = pareto_front(rows)
    assert [r["number"] for r in front] == [3, 1, 0]
    picks = pick_variants(rows, 4)
    assert {r["number"] for r in picks} >= {0, 1, 3} and len(picks) == 4
    assert choose([dict(r, feasible=True, objective_key="x") for r in rows])["number"] == 3


def test_budget_parser():
    lims = parse_budget("size<=0.2x, latency_b1<=2ms,ram<=256KB")
    assert [(l.key, l.value, l.relative) for l in lims] == [("size", 0.2, True), ("latency_b1", 2.0, False),
                                                            ("ram", 256 * 1024, False)]
    for bad, msg in (("size<0.2x", "KEY<=VALUE"), ("speed<=0.5x", "unknown key"), ("ram<=0.5x", "absolute"),
                     ("latency_b1<=3KB", "ms or s"), ("size<=0x", "positive")):
        with pytest.raises(ConfigError, match=msg):
            parse_budget(bad)


def _rows(split):
    return {tuple(r) for r in split.inputs[0].reshape(len(split), -1).tolist()}


def test_validation_sources_never_overlap_what_trains_or_what_is_reported(digits, tmp_path):
    """train: the validation rows leave the training split; test: they leave the test split and the figures are
    stated on the rest; val: the data's own validation split (npz x_val/y_val) is used as it is."""
    import numpy as np

    from slimkit.search.planner import carve_validation
    from slimkit.zoo.data import from_npz

    for source, pool in (("train", digits.train), ("test", digits.test)):
        search, report, about = carve_validation(digits, None, 0, source)
        val, train, stated = _rows(search.test), _rows(search.train), _rows(report.test)
        assert about["source"] == source and len(search.test) == about["samples"]
        assert val <= _rows(pool) and not val & train and not val & stated
        assert _rows(report.train) == train  # best/ is rebuilt on the rows the trials trained on
        assert len(search.test) == round(len(pool) * (0.2 if source == "train" else 0.5))
    assert len(carve_validation(digits, None, 0, "test")[1].test) == len(digits.test) - 180
    assert carve_validation(digits, None, 0, "auto")[2]["source"] == "train"  # no validation split of its own
    f = tmp_path / "d.npz"
    x, y = digits.train.inputs[0].numpy(), digits.train.targets.numpy()
    np.savez(f, x=x[:1000], y=y[:1000], x_val=x[1000:], y_val=y[1000:], x_test=digits.test.inputs[0].numpy(),
             y_test=digits.test.targets.numpy())
    bundle = from_npz(str(f))
    search, report, about = carve_validation(bundle, None, 0, "auto")
    assert about["source"] == "val" and len(search.test) == len(x) - 1000 and len(search.train) == 1000
    assert len(report.test) == len(digits.test)
    np.savez(f, x=x, y=y, x_val=x[:5])
    with pytest.raises(Exception, match="x_val is given without x_test"):
        from_npz(str(f))


# --------------------------------------------------------------------------- CLI: refusals, resume, workers

def _cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.output


@pytest.mark.parametrize("args, msg", [
    (["--objective", "speed"], "--objective 'speed' is not one of"),
    (["--budget", "size<0.5"], "KEY<=VALUE"),
    (["--runtime", "litert", "--objective", "peak_mem"], "peak_mem is measured for ONNX Runtime only"),
    (["--time", "soon"], "--time 'soon'"),
    (["--sampler", "grid"], "--sampler 'grid'"),
    (["--variants", "1"], "--variants 1"),
    (["--space", "quantize.int9"], "unknown technique"),
    (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open the database|cannot open the study"),
    (["--val-from", "dev"], "--val-from 'dev' is not one of"),
    (["--val-from", "val"], "has no validation split"),
    (["--noise-margin", "9"], "--noise-margin 9.0 must be"),
])
def test_refusals_are_one_line_before_work(tmp_path, args, msg):
    code, text = _cli("optimize", "zoo:digits-cnn", "--out", tmp_path / "o", "--trials", 1, "--no-references", *args)
    lines = [l for l in text.strip().splitlines() if l.startswith("slimkit: error:")]
    assert code == 2 and len(lines) == 1, text
    import re

    assert re.search(msg, lines[0]), lines[0]
    assert "Traceback" not in text
    assert not (tmp_path / "o" / "trials.json").exists()


def test_a_users_folder_and_another_study_are_refused(tmp_path, study):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    code, text = _cli("optimize", "zoo:digits-cnn", "--out", user, "--trials", 1)
    assert code == 2 and "not a slimkit output" in text and (user / "notes.txt").read_text() == "keep"
    out, _ = study  # the module's study was made for digits-cnn with latency_bN: another objective is refused
    before = (out / "trials.json").read_bytes()
    code, text = _cli("optimize", "zoo:digits-cnn", "--out", out, "--trials", 1, "--space", "prune.structured",
                      "--no-references")
    assert code == 2 and "created for another" in text, text
    assert (out / "trials.json").read_bytes() == before
    import optuna
    from optuna.storages.journal import JournalFileBackend

    st = optuna.storages.JournalStorage(JournalFileBackend(str(out / "study.journal")))
    assert len(optuna.load_study(study_name="slimkit", storage=st).trials) == 4  # the study is intact


def test_unmeetable_budget_names_the_closest_candidates(tmp_path):
    code, text = _cli("optimize", "zoo:digits-cnn", "--out", tmp_path / "o", "--trials", 1, "--no-references",
                      "--space", CLI_SPACE, "--budget", "size<=0.001x")
    assert code == 2 and "no candidate met the budget" in text and "closest: trial 0" in text, text
    assert json.loads((tmp_path / "o" / "trials.json").read_text())["trials"]
    assert not (tmp_path / "o" / "best").exists()


def _proc(args):
    return subprocess.Popen([sys.executable, "-m", "slimkit.cli", *map(str, args)], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trials(out: Path) -> list:
    try:
        return json.loads((out / "trials.json").read_text())["trials"]
    except (OSError, ValueError):
        return []


ARGS = ["--trials", 3, "--no-references", "--space", CLI_SPACE, "--seed", 1]


def test_sigkill_then_rerun_continues_the_study(tmp_path):
    out = tmp_path / "o"
    p = _proc(["optimize", "zoo:digits-cnn", "--out", out, *ARGS])
    t0 = time.time()
    while time.time() - t0 < 300 and not any(t["state"] == "COMPLETE" for t in _trials(out)):
        assert p.poll() is None, p.communicate()
        time.sleep(0.5)
    time.sleep(1.0)  # the next trial is in flight
    p.send_signal(signal.SIGKILL)
    p.wait()
    first = [t for t in _trials(out) if t["state"] == "COMPLETE"]
    assert first
    r = subprocess.run([sys.executable, "-m", "slimkit.cli", "optimize", "zoo:digits-cnn", "--out", str(out),
                        *map(str, ARGS)], capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    trials = _trials(out)
    counted = [t for t in trials if not t.get("interrupted")]
    assert len(counted) == 3 and sorted(t["number"] for t in trials) == list(range(len(trials)))
    assert len(trials) - len(counted) <= 1  # at most the trial in flight was lost
    assert all(t["state"] in ("COMPLETE", "PRUNED", "FAIL") for t in trials)
    # the trials done before the kill were kept, not redone
    assert {t["number"] for t in first} <= {t["number"] for t in trials if t["state"] == "COMPLETE"}
    assert (out / "best" / "report.json").is_file()


def test_two_workers_share_one_journal(tmp_path):
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "slimkit.cli", "optimize", "zoo:digits-cnn", "--out", str(out),
                        "--workers", "2", *map(str, ARGS[:1]), "4", *map(str, ARGS[2:])], capture_output=True,
                       text=True, env=dict(os.environ), timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    trials = _trials(out)
    numbers = [t["number"] for t in trials]
    assert len(numbers) == len(set(numbers)) and 4 <= len(trials) <= 5  # a race may start one extra, never lose one
    assert all(t["state"] in ("COMPLETE", "PRUNED", "FAIL") for t in trials)
    assert len({t["worker"] for t in trials}) == 2  # both processes ran trials
    recipes = [json.dumps(t["recipe"], sort_keys=True) for t in trials if t.get("recipe")]
    assert len(recipes) == len(trials)


def test_a_model_no_technique_applies_to(tmp_path, digits):
    import torch.nn as nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 10)).eval()  # one output layer: no channel to remove
    with pytest.raises(ConfigError, match="no technique in the space could be applied.*no channel group"):
        optimize(model, digits, out=tmp_path / "o", trials=1, references=False,
                 space={"prune.structured": {"allocation": "uniform"}, "finetune": {"epochs": [2, 2]}})
    assert json.loads((tmp_path / "o" / "trials.json").read_text())["trials"][0]["state"] == "FAIL"


@pytest.mark.parametrize("technique, ranges, size_below", [
    ("quantize.qat", {"weight_bits": 4, "pack_4bit": True, "epochs": 2}, 0.2),
    ("quantize.mixed_precision", {"target_size": 0.2}, 0.3),
])
def test_qat_and_mixed_precision_are_planner_candidates(tmp_path, digits_mlp, digits, technique, ranges, size_below):
    """Both declare tunable fields, so they sit in the default space's quantize slot; a candidate of each is built,
    exported (4-bit codes packed) and measured like any other, and the ONNX file is as small as its bits say."""
    assert technique in {c.technique for c in dict(SearchSpace.from_registry().slots)["quantize"]}
    res = optimize(digits_mlp, digits, out=tmp_path / "o", trials=1, objective="size", space={technique: ranges},
                   references=False, seed=0, max_drop=5.0)
    t = res.trials[0]
    assert t["state"] == "COMPLETE", t.get("reason")
    assert [s["type"] for st in t["recipe"]["stages"] for s in st["techniques"]] == [technique]
    assert t["ratios"]["size"] < size_below and t["test"] >= 0.9


def test_width_nas_starts_from_the_hand_designed_shapes(tmp_path, digits_mlp, digits):
    """prune.widths declares the uniform half width (the distill-student recipe's shape, with its recovery where
    the space can draw it) and the uniform three-quarter width as seed points: a new study tries them first, the
    sampler draws from the third trial on; values the space cannot draw (40 epochs here) are left to it."""
    space = {"prune.widths": {}, "finetune": {"epochs": [2, 4], "temperature": [1.0, 4.0]}}
    res = optimize(digits_mlp, digits, out=tmp_path / "o", trials=3, objective="latency_bN", space=space,
                   references=False, seed=0, max_drop=5.0)
    rows = sorted(res.trials, key=lambda t: t["number"])
    widths = [s["widths"] for s in (r["recipe"]["stages"][0]["techniques"][0] for r in rows)]
    assert set(widths[0].values()) == {0.5} and set(widths[1].values()) == {0.75}
    assert len(widths[0]) >= 2  # one entry per channel group of the MLP
    assert [r["recipe"]["stages"][0]["finetune"]["temperature"] for r in rows[:2]] == [4.0, 4.0]
    assert all(2 <= r["recipe"]["stages"][0]["finetune"]["epochs"] <= 4 for r in rows)
    assert len({json.dumps(w, sort_keys=True) for w in widths}) == 3  # the third is the sampler's, not a seed again


def test_the_halfway_check_lets_a_climbing_candidate_near_the_bar_finish_and_stops_the_rest():
    """Successive halving inside a candidate: at half its recovery, below the bar and not climbing -> stopped; below
    the bar but climbing by more than one standard error since the epoch before -> it finishes; far below -> stopped."""
    from slimkit.search.planner import HalfwayCheck, Unpromising

    def run(curve, n=300):
        seen = iter(curve)
        check = HalfwayCheck(8, bar=0.85, score=lambda model: next(seen), n=n)
        for epoch in range(1, 9):
            check(None, {"epoch": epoch})  # the score is read at epochs 3 and 4 only

    run([0.84, 0.86])  # above the bar at half: goes on
    run([0.76, 0.81])  # the KD dip, climbing 5 pt (one SE of 300 samples: 2.3 pt): goes on
    with pytest.raises(Unpromising, match="0.8000 after 4 epochs \\(an epoch before: 0.7900\\), below 0.8500$"):
        run([0.79, 0.80])  # climbing less than the noise: stopped
    with pytest.raises(Unpromising, match="below 0.8500$"):
        run([0.83, 0.80])  # falling: stopped
    with pytest.raises(Unpromising, match="by more than 0.1"):
        run([0.50, 0.70])  # climbing, but far below: stopped
    run([0.80, 0.84], n=0)  # a fidelity metric (no sampling noise counted): climbing, goes on
