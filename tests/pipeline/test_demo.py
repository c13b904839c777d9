import json

from typer.testing import CliRunner

from slimkit.cli import app

KEYS = ("params", "macs", "size_bytes", "latency_ms_p50_b1", "latency_ms_p50_bN", "peak_mem_bytes", "energy_mj_est")


def test_demo_runs_the_planner_and_ends_smaller_with_an_honest_speed_verdict(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--trials", "4"])
    assert res.exit_code == 0, res.output
    for f in ("trials.json", "pareto.json", "study.journal", "best/model.onnx", "best/recipe.yaml"):
        assert (out / f).is_file(), f
    rep = json.loads((out / "best" / "report.json").read_text())
    r = rep["ratios"]
    assert r["size_bytes"] < 1 and rep["compressed"]["accuracy"] >= 0.97 and rep["pareto"]
    # whether it is faster is a timing (bench/, docs/BENCHMARKS.md); what the demo must do is say what it measured:
    # "faster" only where both batch sizes are below 0.9x in the report it wrote, "NOT faster" otherwise
    faster = r["latency_ms_p50_b1"] < 0.9 and r["latency_ms_p50_bN"] < 0.9
    verdict = "is smaller and faster than" if faster else "is smaller but NOT faster at both batch sizes than"
    assert verdict in res.output, res.output
    assert f"{r['latency_ms_p50_b1']:.2f}x the batch-1" in res.output
    # an earlier demo output is replaced whole
    res = CliRunner().invoke(app, ["--quiet", "demo", "--out", str(out), "--recipe", "demo"])
    assert res.exit_code == 0, res.output
    assert not (out / "trials.json").exists() and (out / "model.onnx").is_file()


def test_demo_recipe_writes_all_artifacts_with_all_keys(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["--quiet", "demo", "--out", str(out), "--recipe", "demo"])
    assert res.exit_code == 0, res.output
    for f in ("model.onnx", "report.json", "report.md", "report.html", "recipe.yaml"):
        assert (out / f).is_file(), f
    rep = json.loads((out / "report.json").read_text())
    for side in ("baseline", "compressed"):
        m = rep[side]
        assert "accuracy" in m and m["accuracy"] >= 0.97
        for k in KEYS:
            assert isinstance(m[k], (int, float)) and m[k] > 0, (side, k)
    assert "ratios" in rep and "stages" in rep and rep["environment"]["threads"] >= 1
    assert rep["environment"]["torch"] and rep["environment"]["onnxruntime"]
    assert "| metric | baseline | compressed |" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "Plotly.newPlot" in page and "https://" not in page.split("<script>")[0]
    # re-rendering from the json works
    res = CliRunner().invoke(app, ["--quiet", "report", str(out)])
    assert res.exit_code == 0, res.output


def test_mixed_precision_recipe_puts_sensitivity_in_reports(tmp_path):
    out = tmp_path / "mp"
    res = CliRunner().invoke(app, ["--quiet", "compress", "zoo:digits-mlp", "--recipe", "mixed-precision", "--out",
                                   str(out), "--runs", "20"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["sensitivity"]) == 4 and {"layer", "sqnr_db_int4", "chosen_bits"} <= set(rep["sensitivity"][0])
    assert "## Per-layer sensitivity" in (out / "report.md").read_text()
    assert rep["compressed"]["accuracy"] >= rep["baseline"]["accuracy"] - 0.01
    assert rep["compressed"]["quantization"]["precision_plan"]
