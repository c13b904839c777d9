import json
import subprocess
import sys

import numpy as np
import torch
from typer.testing import CliRunner

from slimkit.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["--quiet", *args])


def one_line_error(res, pattern):
    assert res.exit_code != 0, res.output
    err = res.stderr if hasattr(res, "stderr") and res.stderr else res.output
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("slimkit: error:")
    assert pattern in lines[0], lines[0]


def test_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "slimkit.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("list", "profile", "bench", "export", "compress", "demo", "report"):
        assert cmd in out.stdout


def test_every_command_has_man_page_help():
    for cmd in ("list", "profile", "bench", "export", "compress", "optimize", "demo", "report", "unpack"):
        res = run(cmd, "--help")
        assert res.exit_code == 0 and "Usage:" in res.output and len(res.output) > 200


def test_list_json():
    res = run("list", "--json")
    assert res.exit_code == 0
    d = json.loads(res.output)
    assert {"digits-cnn", "digits-mlp", "mnist1d-cnn", "minilm", "mnist-mlp", "cifar10-cnn"} <= set(d["zoo"])
    assert {"digits", "mnist1d", "sentences"} <= set(d["data"])
    assert "demo" in d["recipes"]


def test_missing_model_file(tmp_path):
    one_line_error(run("profile", str(tmp_path / "nope.pt2")), "model file not found")


def test_truncated_pt2(tmp_path, digits_cnn, digits):
    ep = torch.export.export(digits_cnn, digits.example_inputs(1))
    good = tmp_path / "m.pt2"
    torch.export.save(ep, str(good))
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    one_line_error(run("profile", str(bad), "--data", "zoo:digits"), "not a readable torch.export file")


def test_pt2_loads_and_exports(tmp_path, digits_cnn, digits):
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(digits_cnn, digits.example_inputs(2), dynamic_shapes=({0: batch},))
    f = tmp_path / "m.pt2"
    torch.export.save(ep, str(f))
    res = run("export", str(f), "--data", "zoo:digits", "--out", str(tmp_path / "m.onnx"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.onnx").stat().st_size > 100_000


def test_pickle_needs_trust_flag(tmp_path, digits_cnn):
    f = tmp_path / "full.pt"
    torch.save(digits_cnn, f)
    one_line_error(run("export", str(f), "--data", "zoo:digits", "--out", str(tmp_path / "o.onnx")), "--trust-pickle")
    assert not (tmp_path / "o.onnx").exists()
    res = run("export", str(f), "--data", "zoo:digits", "--out", str(tmp_path / "o.onnx"), "--trust-pickle")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o.onnx").exists()


def test_state_dict_explains_factory(tmp_path, digits_cnn):
    f = tmp_path / "sd.pt"
    torch.save(digits_cnn.state_dict(), f)
    one_line_error(run("profile", str(f), "--data", "zoo:digits"), "state dict")


def test_wrong_data_spec():
    one_line_error(run("profile", "zoo:digits-cnn", "--data", "bogus"), "bad DATA spec")
    one_line_error(run("profile", "zoo:digits-cnn", "--data", "zoo:nonsense"), "unknown zoo data set")
    one_line_error(run("profile", "zoo:nonsense"), "unknown zoo model")


def test_wrong_input_shape_and_no_partial_out(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32)
    y = np.arange(40) % 10
    np.savez(tmp_path / "small.npz", x=x, y=y)
    out = tmp_path / "out"
    res = run("compress", "zoo:digits-cnn", "--recipe", "demo", "--data", f"npz:{tmp_path / 'small.npz'}",
              "--out", str(out))
    one_line_error(res, "rejects inputs of shape (2, 1, 8, 8)")
    assert not out.exists()


def test_bad_recipe_fails_before_work(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("version: 1\nstages:\n  - name: s\n    techniques:\n      - type: quantize.nope\n")
    out = tmp_path / "out"
    one_line_error(run("compress", "zoo:digits-cnn", "--recipe", str(r), "--out", str(out)), "unknown technique type")
    assert not out.exists()


def test_npz_missing_file_and_idx_missing(tmp_path):
    one_line_error(run("profile", "zoo:digits-cnn", "--data", f"npz:{tmp_path}/x.npz"), "npz file not found")
    one_line_error(run("profile", "zoo:mnist-mlp", "--data", f"idx:{tmp_path}"), "missing train-images-idx3-ubyte")


def test_nan_data_rejected(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 1, 16, 16)).astype(np.float32)
    x[3, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(40) % 10)
    one_line_error(run("profile", "zoo:digits-cnn", "--data", f"npz:{tmp_path / 'nan.npz'}"), "NaN")


def test_user_architecture_trains_on_user_npz(tmp_path, digits):
    # the MNIST MLP architecture with the user's own (here: digits resized to 28x28) npz files
    x = torch.nn.functional.interpolate(digits.train.inputs[0], size=(28, 28)).numpy()
    xt = torch.nn.functional.interpolate(digits.test.inputs[0], size=(28, 28)).numpy()
    np.savez(tmp_path / "d28.npz", x=x, y=digits.train.targets.numpy(), x_test=xt, y_test=digits.test.targets.numpy())
    res = run("profile", "zoo:mnist-mlp", "--data", f"npz:{tmp_path / 'd28.npz'}", "--json", "--runs", "20")
    assert res.exit_code == 0, res.output
    m = json.loads(res.output[res.output.index("{"):])["metrics"]["mnist-mlp"]
    assert m["accuracy"] > 0.9
    assert m["params"] == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


def test_bench_cli_against_itself(tmp_path):
    res = run("bench", "zoo:digits-cnn", "zoo:digits-cnn", "--json", "--runs", "20", "--batch", "32")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output[res.output.index("{"):])
    r = d["ratios"]["digits-cnn (2)"]
    assert r["size_bytes"] == 1.0 and 0.5 < r["latency_ms_p50_bN"] < 2.0


def test_unpack_packed_mixed_precision_file(tmp_path, digits_mlp, digits):
    import numpy as np
    import onnx

    from slimkit.core import Context
    from slimkit.export import ort_run, ort_session
    from slimkit.quantize import MixedPrecisionConfig, mixed_precision

    qm = mixed_precision(digits_mlp, MixedPrecisionConfig(target_size=0.15), Context(data=digits))
    src, dst = tmp_path / "packed.onnx", tmp_path / "int8.onnx"
    qm.slimkit_export(digits, src)
    res = run("unpack", str(src), str(dst))
    assert res.exit_code == 0, res.output
    assert not any(i.data_type == onnx.TensorProto.INT4 for i in onnx.load(str(dst)).graph.initializer)
    x = digits.test.slice(0, 64).inputs
    np.testing.assert_array_equal(ort_run(ort_session(dst), x), ort_run(ort_session(src), x))
    # a file without packed weights: a one-line error, nothing written
    res = run("unpack", str(dst), str(tmp_path / "again.onnx"))
    assert res.exit_code == 2 and "no packed 4-bit weights" in res.output and not (tmp_path / "again.onnx").exists()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    res = run("unpack", str(bad), str(tmp_path / "x.onnx"))
    assert res.exit_code == 2 and "not a readable ONNX file" in res.output
