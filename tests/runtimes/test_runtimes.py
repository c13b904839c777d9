"""On-device runtimes: each exports a zoo CNN, loads it, agrees with PyTorch and keeps its accuracy; the int8
.tflite really holds int8 kernels; TFLM finds its arena and runs in it; the C array round-trips; a missing extra is
a one-line error."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from slimkit.cli import app  # noqa: E402
from slimkit.runtimes import get_runtime  # noqa: E402


def _acc(sess, data) -> float:
    out = sess.run(data.test.inputs)
    return float(np.mean(out.argmax(-1) == data.test.targets.numpy()))


@pytest.fixture(scope="module")
def cnn_artifacts(tmp_path_factory, digits_cnn, digits):
    d = tmp_path_factory.mktemp("rt")
    lit = get_runtime("litert")
    return {"fp32": lit.export(digits_cnn, digits, d / "fp32.tflite", "fp32", batch=1),
            "int8": lit.export(digits_cnn, digits, d / "int8.tflite", "int8", batch=1)}


def test_litert_fp32_matches_pytorch(cnn_artifacts, digits_cnn, digits):
    sess = get_runtime("litert").open(cnn_artifacts["fp32"], 1)
    with torch.no_grad():
        ref = digits_cnn.eval()(*digits.test.slice(0, 64).inputs).numpy()
    got = sess.run(digits.test.slice(0, 64).inputs)
    assert np.max(np.abs(got - ref)) < 1e-3
    assert _acc(sess, digits) >= 0.98


def test_litert_int8_is_really_int8_and_accurate(cnn_artifacts, digits_cnn, digits):
    from slimkit.runtimes.litert import tensor_types

    art = cnn_artifacts["int8"]
    ops = get_runtime("litert").ops(art)
    assert {"CONV_2D", "FULLY_CONNECTED"} <= set(ops), ops
    types = tensor_types(art)
    n_int8 = sum(1 for t in types.values() if t == "int8")
    assert n_int8 >= 10 and not any(t == "float32" for t in types.values()), types
    for name in ("litert", "litert-builtin"):
        sess = get_runtime(name).open(art, 1)
        assert sess.inp[0]["dtype"] == np.int8 and sess.out["dtype"] == np.int8
        with torch.no_grad():
            torch_acc = float((digits_cnn.eval()(*digits.test.inputs).argmax(-1) == digits.test.targets)
                              .float().mean())
        assert _acc(sess, digits) >= torch_acc - 0.01, name


def test_static_batch_is_a_clear_error(cnn_artifacts, digits):
    from slimkit.core.errors import ExportError

    sess = get_runtime("litert").open(cnn_artifacts["fp32"], 1)
    with pytest.raises(ExportError, match="exported for batch 1"):
        sess.runner(digits.example_inputs(4))


def test_tflm_arena_and_bit_compatibility(cnn_artifacts, digits):
    pytest.importorskip("tflite_micro")
    from slimkit.runtimes.tflm import TFLMSession, _runs, min_arena

    art = cnn_artifacts["int8"]
    sess = TFLMSession(art)
    sample = sess.quantize_input(digits.test.inputs[0][:1])
    arena = min_arena(art.path, sample)
    assert 1024 < arena < 64 * 1024
    assert _runs(art.path, arena, sample) and not _runs(art.path, arena - 256, sample)
    small = digits.test.slice(0, 100)
    tflm_out = TFLMSession(art, arena=arena).run(small.inputs)
    ref_out = get_runtime("litert-builtin").open(art, 1).run(small.inputs)
    assert np.mean(tflm_out.argmax(-1) == ref_out.argmax(-1)) >= 0.99
    assert np.max(np.abs(tflm_out - ref_out)) <= 2 * float(sess.out["quantization_parameters"]["scales"][0])


def test_c_array_round_trip_and_board_fit(cnn_artifacts, tmp_path):
    from slimkit.runtimes.tflm import board, fit, parse_c_array, write_firmware

    art = cnn_artifacts["int8"]
    h, cc = write_firmware(art, tmp_path / "fw", 9_000)
    assert parse_c_array(cc.read_text()) == art.path.read_bytes()
    assert "alignas(16)" in cc.read_text() and "kTensorArenaSize = 9000" in h.read_text()
    assert fit(art, 9_000, board("cortex-m4"))["fits"]
    v = fit(art, 9_000, board("ram=4KB,flash=64KB"))
    assert not v["fits"] and "RAM" in v["verdict"] and "flash" in v["verdict"]


def test_profile_runtimes_cli(digits_mlp):
    pytest.importorskip("tflite_micro")
    res = CliRunner().invoke(app, ["-q", "profile", "zoo:digits-mlp", "--runtime", "ort,litert,tflm", "--int8",
                                   "--board", "cortex-m4", "--json", "--runs", "20", "--batch", "32"])
    assert res.exit_code == 0, res.stderr
    d = json.loads(res.stdout)
    rows = d["rows"]
    assert list(rows) == ["ort fp32", "litert fp32", "litert int8", "tflm int8"]
    for lbl, m in rows.items():
        assert m["accuracy"] >= 0.95, lbl
        assert m["latency_ms_p50_b1"] > 0
    assert rows["litert int8"]["size_bytes"] < 0.4 * rows["litert fp32"]["size_bytes"]
    assert rows["tflm int8"]["arena_bytes"] > 0 and rows["tflm int8"]["board"]["fits"]
    assert "vs_same_runtime_fp32" in rows["litert int8"]


@pytest.mark.parametrize("package,runtime,extra", [("ai_edge_litert", "litert", "slimkit[litert]"),
                                                    ("executorch", "executorch", "slimkit[executorch]")])
def test_missing_extra_is_one_line(monkeypatch, package, runtime, extra):
    import slimkit.runtimes.base as base

    real = base.importlib.import_module

    def fake(name, *a, **kw):
        if name == package:
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(base.importlib, "import_module", fake)
    res = CliRunner().invoke(app, ["-q", "profile", "zoo:digits-mlp", "--runtime", runtime])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "pip install" in lines[0] and extra in lines[0], res.stderr


def test_unknown_runtime_is_one_line():
    res = CliRunner().invoke(app, ["-q", "profile", "zoo:digits-mlp", "--runtime", "litrt"])
    assert res.exit_code == 2 and "did you mean 'litert'?" in res.stderr


def test_compress_to_every_runtime(tmp_path, digits_mlp):
    pytest.importorskip("tflite_micro")
    from slimkit.runtimes.tflm import parse_c_array

    rec = tmp_path / "r.yaml"
    rec.write_text("version: 1\nname: prune-quick\nstages:\n  - name: prune\n    techniques:\n"
                   "      - {type: prune.structured, target_macs: 0.5, allocation: uniform}\n"
                   "    finetune: {method: kd, epochs: 2}\n")
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["-q", "compress", "zoo:digits-mlp", "--recipe", str(rec), "--out", str(out),
                                   "--runtime", "litert,tflm", "--board", "cortex-m4", "--runs", "20", "--batch", "32",
                                   "--precision", "fp16"])
    assert res.exit_code == 0, res.stderr
    for f in ("model.onnx", "model.tflite", "model_int8.tflite", "model_fp16.tflite", "model_data.cc",
              "model_data.h", "report.html"):
        assert (out / f).is_file(), f
    # the weight format asked for is written from the compressed model and measured like the others
    assert (out / "model_fp16.tflite").stat().st_size < 0.6 * (out / "model.tflite").stat().st_size
    assert parse_c_array((out / "model_data.cc").read_text()) == (out / "model_int8.tflite").read_bytes()
    rep = json.loads((out / "report.json").read_text())
    rows = rep["runtimes"]["rows"]
    assert {"baseline: ort fp32", "compressed: litert int8", "compressed: tflm int8"} <= set(rows)
    assert rows["compressed: litert int8"]["accuracy"] >= rows["baseline: ort fp32"]["accuracy"] - 0.03
    assert rows["compressed: litert fp16"]["accuracy"] >= rows["compressed: litert fp32"]["accuracy"] - 0.01
    assert "baseline: litert fp16" in rows and "compressed: tflm fp16" not in rows
    assert rows["compressed: tflm int8"]["arena_bytes"] < rows["baseline: tflm int8"]["arena_bytes"] * 1.01
    assert any("TFLM (compressed): fits cortex-m4" in v for v in rep["verdicts"])
    html = (out / "report.html").read_text()
    assert 'id="runtimes"' in html and 'data-figure="runtimes"' in html


def test_slimkit_dynamic_int8_becomes_litert_dynamic_range_int8_of_its_own_codes(digits_mlp, digits, tmp_path):
    """slimkit's dynamic int8 (GPTQ codes, SmoothQuant) is ONNX-only elsewhere; in LiteRT it is the dynamic-range
    int8 of slimkit's dequantized weights: the file's int8 weight codes are slimkit's, its outputs agree with
    slimkit's simulation, and `compress --runtime litert` measures it beside the baseline."""
    from ai_edge_litert.interpreter import Interpreter

    from slimkit.core import Context
    from slimkit.quantize.dynamic import DynamicQuantConfig, DynQuantLinear, _wq, int8_dynamic

    dyn = int8_dynamic(digits_mlp, DynamicQuantConfig(), Context(data=digits))
    art = get_runtime("litert").export(dyn, digits, tmp_path / "d.tflite", "fp32", batch=1)
    assert art.precision == "int8-dynamic" and art.quantizer == "slimkit" and art.parity["top1_agreement"] >= 0.95
    it = Interpreter(model_path=str(art.path))
    it.allocate_tensors()
    codes = {}
    for d in it.get_tensor_details():
        if d["dtype"] == np.int8 and len(d["shape"]) == 2:
            codes[tuple(int(v) for v in d["shape"])] = it.get_tensor(d["index"])
    layers = [m for m in dyn.model.modules() if isinstance(m, DynQuantLinear)]
    assert len(codes) == len(layers) == 4
    for m in layers:
        q, _ = _wq(m.weight.detach(), m.qmax, m.per_channel, m.w_scale)
        same = float((torch.from_numpy(codes[tuple(q.shape)].astype(np.float32)) == q).float().mean())
        assert same >= 0.99, same  # LiteRT re-derives each row's scale from its largest code
    assert _acc(get_runtime("litert").open(art, 1), digits) >= 0.97
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["-q", "compress", "zoo:digits-mlp", "--recipe", "int8-dynamic", "--runtime",
                                   "litert", "--out", str(out), "--runs", "20"])
    assert res.exit_code == 0, res.stderr
    rows = json.loads((out / "report.json").read_text())["runtimes"]["rows"]
    row = rows["compressed: litert int8-dynamic"]
    assert row["quantizer"] == "slimkit" and row["accuracy"] >= rows["baseline: ort fp32"]["accuracy"] - 0.01
    assert (out / "model_int8_dynamic.tflite").exists()


@pytest.mark.parametrize("args, msg", [
    (["--recipe", "int8-dynamic", "--runtime", "tflm"], "exports to ONNX Runtime and litert only"),
    (["--recipe", "int4-weights", "--runtime", "litert"], "exports to ONNX Runtime only"),
    (["--recipe", "int8-static", "--runtime", "litert", "--precision", "fp16"], "quantizes already"),
    (["--recipe", "prune-structured-50", "--precision", "fp16"], "add --runtime litert"),
    (["--recipe", "prune-structured-50", "--runtime", "tflm", "--precision", "fp16"], "none of tflm exports it"),
])
def test_runtime_recipe_mismatch_is_refused_before_work(tmp_path, args, msg):
    res = CliRunner().invoke(app, ["-q", "compress", "zoo:digits-mlp", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2 and msg in res.stderr and not (tmp_path / "o").exists(), res.stderr


def test_export_runtime_cli(tmp_path, digits_mlp):
    pytest.importorskip("tflite_micro")
    from slimkit.runtimes.tflm import parse_c_array

    out = tmp_path / "model.tflite"
    res = CliRunner().invoke(app, ["-q", "export", "zoo:digits-mlp", "--runtime", "tflm", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["precision"] == "int8" and d["top1_agreement"] >= 0.95 and d["arena_bytes"] > 0
    assert parse_c_array((tmp_path / "model_data.cc").read_text()) == out.read_bytes()
    assert f"kTensorArenaSize = {d['arena_bytes']}" in (tmp_path / "model_data.h").read_text()
    # slimkit's own .tflite is replaced by a later run without --force; a user's file is not
    res = CliRunner().invoke(app, ["-q", "export", "zoo:digits-mlp", "--runtime", "litert", "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    user = tmp_path / "theirs.tflite"
    user.write_bytes(b"not ours")
    res = CliRunner().invoke(app, ["-q", "export", "zoo:digits-mlp", "--runtime", "litert", "--out", str(user)])
    assert res.exit_code == 2 and "--force" in res.stderr and user.read_bytes() == b"not ours"
    res = CliRunner().invoke(app, ["-q", "export", "zoo:digits-mlp", "--runtime", "litert", "--out",
                                   str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "a litert artifact is a .tflite file" in res.stderr


def test_litert_weight_formats(tmp_path, digits_mlp, digits):
    lit = get_runtime("litert")
    fp = lit.export(digits_mlp, digits, tmp_path / "f.tflite", "fp32", batch=1)
    with torch.no_grad():
        ref = digits_mlp.eval()(*digits.test.inputs).numpy()
    for prec, max_share in (("fp16", 0.55), ("int8-dynamic", 0.35), ("int8-weights", 0.35)):
        art = lit.export(digits_mlp, digits, tmp_path / f"{prec}.tflite", prec, batch=1)
        assert art.precision == prec and art.quantizer == "stock"
        assert art.path.stat().st_size < fp.path.stat().st_size * max_share, prec
        got = lit.open(art, 1).run(digits.test.inputs)
        if prec == "fp16":
            assert np.max(np.abs(got - ref)) < 0.05 * max(1.0, float(np.abs(ref).max()))
        assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.98, prec
    res = CliRunner().invoke(app, ["-q", "export", "zoo:digits-mlp", "--runtime", "executorch", "--precision", "fp16",
                                   "--out", str(tmp_path / "x.pte")])
    assert res.exit_code == 2 and "exports fp32, int8, not 'fp16'" in res.stderr and not (tmp_path / "x.pte").exists()


class _RunningMax(torch.nn.Module):
    def forward(self, x):
        return torch.cummax(x, dim=-1).values  # no LiteRT lowering for aten.cummax


def test_unsupported_operator_names_the_op_the_layer_and_the_line(tmp_path, digits):
    """A converter failure says which ATen op has no lowering, which layer of the user's model issues it and on
    which line of the user's code, and writes nothing."""
    from slimkit.core.errors import ExportError

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(digits.test.inputs[0][0].numel(), 10),
                                _RunningMax()).eval()
    out = tmp_path / "m.tflite"
    with pytest.raises(ExportError) as e:
        get_runtime("litert").export(model, digits, out, "fp32")
    msg = str(e.value)
    assert "aten.cummax" in msg and "layer 2 (_RunningMax)" in msg and "test_runtimes.py:" in msg, msg
    assert "\n" not in msg and not out.exists()


def test_an_embedding_artifact_refused_on_cosine_says_what_serves(digits):
    """check_int8 refuses an artifact whose embeddings drift (cosine < 0.99); for static int8 the line says why
    transformers drift and names LiteRT's weight formats, for a weight format it does not."""
    from slimkit.core.data import DataBundle, DataSplit
    from slimkit.core.errors import ExportError
    from slimkit.runtimes.base import check_int8

    g = torch.Generator().manual_seed(0)
    data = DataBundle("emb", "embedding", None, DataSplit(torch.randn(16, 32, generator=g), None))

    class Drifting:
        batch = 1

        def run(self, x):
            return x[0].numpy() + 0.5 * np.random.default_rng(0).normal(size=x[0].shape).astype(np.float32)

    with pytest.raises(ExportError, match="int8-dynamic") as e:
        check_int8(Drifting(), torch.nn.Identity(), data, "LiteRT int8 (slimkit)")
    assert "nothing written" in str(e.value)
    with pytest.raises(ExportError) as e:
        check_int8(Drifting(), torch.nn.Identity(), data, "litert fp16", "fp16")
    assert "int8-dynamic" not in str(e.value)


def test_float_first_keeps_the_first_layer_float_in_every_artifact(tmp_path, digits_cnn, digits):
    """``float_first``: the convolution over the input channel runs in float (a depthwise conv with a channel
    multiplier in LiteRT, whose int8 kernel is the slow one here), the rest stays int8, the accuracy holds."""
    from slimkit.core import Context
    from slimkit.export.onnx import export_artifact
    from slimkit.quantize.static import StaticQuantConfig, int8_static
    from slimkit.runtimes.litert import tensor_types

    ctx = Context(data=digits)
    qm = int8_static(digits_cnn, StaticQuantConfig(float_first=True), ctx)
    assert qm.info["float_first"] == "features.0" and "features.0" not in qm.info["quantized_layers"]
    assert len(qm.info["quantized_layers"]) == 4 and any("features.0" in n for n in ctx.notes)
    export_artifact(qm, digits, tmp_path / "q.onnx")  # the QDQ file matches the simulation (tight check)
    lit = get_runtime("litert")
    art = lit.export(qm, digits, tmp_path / "q.tflite", "int8", batch=1)
    ops = lit.ops(art)
    assert "QUANTIZE" in ops and ops.index("QUANTIZE") > min(ops.index(o) for o in ("CONV_2D", "DEPTHWISE_CONV_2D")
                                                               if o in ops)
    types = tensor_types(art)
    assert sum(t == "int8" for t in types.values()) >= 8 and any(t == "float32" for t in types.values())
    sess = lit.open(art, 1)
    assert sess.inp[0]["dtype"] == np.float32
    with torch.no_grad():
        torch_acc = float((digits_cnn.eval()(*digits.test.inputs).argmax(-1) == digits.test.targets).float().mean())
    assert _acc(sess, digits) >= torch_acc - 0.01


def test_int8_where_faster_times_each_layer_and_keeps_the_slower_ones_float(tmp_path, digits_cnn, digits,
                                                                           monkeypatch):
    """``int8_where_faster``: every target layer of the CNN is timed alone in float and int8 in LiteRT (a real
    table: positive times for each layer); the decision follows the table. The timings are this CPU's, so the
    decision is checked on a fixed table: the layers at >= 1.1x stay float, the rest (1.05x included) are int8 in
    the .tflite, which parity-checks against slimkit's simulation and keeps the accuracy."""
    from slimkit.core import Context
    from slimkit.evaluate.layer_speed import int8_speedups
    from slimkit.quantize import static as S
    from slimkit.runtimes.litert import tensor_types

    names = ["features.0", "features.4", "classifier.1", "classifier.3", "classifier.5"]
    real = int8_speedups(digits_cnn, digits, names, "litert", runs=20)
    assert list(real) == names and all(r["fp32_ms"] > 0 and r["int8_ms"] > 0 for r in real.values())
    fixed = {n: {"fp32_ms": 0.01, "int8_ms": 0.02 if n.startswith("features") else 0.005,
                 "ratio": 2.0 if n.startswith("features") else 0.5} for n in names}
    fixed["classifier.5"] = {"fp32_ms": 0.01, "int8_ms": 0.0105, "ratio": 1.05}  # within the margin: stays int8
    import slimkit.evaluate.layer_speed as LS

    monkeypatch.setattr(LS, "int8_speedups", lambda *a, **k: fixed)
    real_whole = LS.program_times
    seen = []

    def whole(models, *a, **k):  # the real whole-program timing runs (positive times), the decision on fixed ones
        got = real_whole(models, *a, runs=10, **k)
        seen.append(got)
        assert set(got) == {"float", "int8"} and all(v > 0 for v in got.values())
        return {"float": 1.0, "int8": 2.0}

    monkeypatch.setattr(LS, "program_times", whole)
    builds, real_prepare = [], S.prepare_static
    monkeypatch.setattr(S, "prepare_static", lambda *a, **k: builds.append(1) or real_prepare(*a, **k))
    ctx = Context(data=digits)
    qm = S.int8_static(digits_cnn, S.StaticQuantConfig(int8_where_faster="litert"), ctx)
    assert len(builds) == 2  # the two whole programs; the winner is the result, not built a third time
    assert sum(n.startswith("int8 static: 3 layers quantized") for n in ctx.notes) == 1  # the winner's notes, once
    assert seen and qm.info["int8_whole_program_ms"] == {"with_float_layers": 1.0, "all_int8": 2.0}
    assert qm.info["keep_float"] == ["features.0", "features.4"] and qm.info["int8_speed"] == fixed
    assert sorted(qm.info["quantized_layers"]) == ["classifier.1", "classifier.3", "classifier.5"]
    assert any("stay float (features.0, features.4)" in n for n in ctx.notes)
    lit = get_runtime("litert")
    art = lit.export(qm, digits, tmp_path / "q.tflite", "int8", batch=1)  # checked against the simulation
    types = tensor_types(art)
    assert any(t == "int8" for t in types.values()) and any(t == "float32" for t in types.values())
    with torch.no_grad():
        torch_acc = float((digits_cnn.eval()(*digits.test.inputs).argmax(-1) == digits.test.targets).float().mean())
    assert _acc(lit.open(art, 1), digits) >= torch_acc - 0.01
    # the layers are slower alone, but the whole program with them float is the slower one: all int8 stays
    monkeypatch.setattr(LS, "program_times", lambda models, *a, **k: {"float": 2.0, "int8": 1.0})
    ctx2 = Context(data=digits)
    q2 = S.int8_static(digits_cnn, S.StaticQuantConfig(int8_where_faster="litert"), ctx2)
    assert not q2.info.get("keep_float") and len(q2.info["quantized_layers"]) == 5
    assert len(builds) == 4 and sum(n.startswith("int8 static: 5 layers quantized") for n in ctx2.notes) == 1
    assert any("the all-int8 program is faster, so features.0, features.4 stay int8" in n for n in ctx2.notes)
    # every layer slower in int8: refused with the timings, not a float model called int8
    monkeypatch.setattr(LS, "int8_speedups", lambda *a, **k: {n: dict(r, ratio=1.5) for n, r in fixed.items()})
    with pytest.raises(S.ConfigError, match="no layer of LeNet5 runs faster in int8.*export it without int8"):
        S.int8_static(digits_cnn, S.StaticQuantConfig(int8_where_faster="litert"), Context(data=digits))


@pytest.mark.parametrize("runtime", ["ort", "tflm", "litrt"])
def test_int8_where_faster_names_the_runtimes_it_can_time(runtime):
    from slimkit.quantize.static import StaticQuantConfig

    with pytest.raises(Exception, match=r"int8_where_faster=.*can be timed in litert, litert-builtin, executorch"):
        StaticQuantConfig(int8_where_faster=runtime)
