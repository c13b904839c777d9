"""The bad-input suite: every class of bad input a new user tried (issue 11), each handled by one mechanism.

Each case builds its own files, runs the command line in-process, and asserts the promise: exit code 2, exactly one
``slimkit: error:`` line and nothing else, no traceback, no code run from a model file (a marker file the crafted
payload would create), the input files byte for byte unchanged, and no scratch folder left behind.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from slimkit.cli import app

# --------------------------------------------------------------------------- crafting files


class _Payload:
    """Unpickling this runs ``touch MARKER``: what an attacker's model file would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_bytes(obj) -> bytes:
    b = io.BytesIO()
    torch.save(obj, b)
    return b.getvalue()


class TinyMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))

    def forward(self, x):
        return self.net(x)


def good_pt2(path: Path) -> Path:
    torch.manual_seed(0)
    ep = torch.export.export(TinyMLP().eval(), (torch.randn(2, 1, 16, 16),),
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(path))
    return path


def craft_pt2(good: Path, out: Path, kind: str, marker: Path) -> Path:
    """A .pt2 archive that runs code when torch.export.load reads it: pickled sample inputs (torch falls back to the
    unsafe unpickler silently), a weight marked use_pickle, or a legacy weights file."""
    zin = zipfile.ZipFile(good)
    with zipfile.ZipFile(out, "w") as zout:
        prefix = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            data = zin.read(info.filename)
            name = info.filename
            if kind == "sample_inputs" and name.endswith("sample_inputs/model.pt"):
                data = _pickle_bytes(((torch.zeros(2, 1, 16, 16),), {"x": _Payload(str(marker))}))
            if kind == "use_pickle" and name.endswith("model_weights_config.json"):
                cfg = json.loads(data)
                first = next(iter(cfg["config"]))
                cfg["config"][first]["use_pickle"] = True
                data = json.dumps(cfg).encode()
            if kind == "use_pickle" and name.endswith("weights/weight_0"):
                data = _pickle_bytes(_Payload(str(marker)))
            zout.writestr(info, data)
        if kind == "legacy_weights":
            zout.writestr(f"{prefix}/data/weights/model.pt", _pickle_bytes({"x": _Payload(str(marker))}))
    return out


def onnx_file(path: Path, kind: str) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 16, 16])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 256])
    if kind == "unknown_op":
        node = helper.make_node("NoSuchOp", ["input"], ["output"], domain="")
    elif kind == "invalid_graph":
        node = helper.make_node("Add", ["input", "missing_tensor"], ["output"])
    else:
        node = helper.make_node("Flatten", ["input"], ["output"])
    m = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    blob = m.SerializeToString()
    if kind == "truncated":
        blob = blob[: len(blob) // 2]
    if kind == "empty":
        blob = b""
    path.write_bytes(blob)
    return path


FACTORIES = '''
import torch
import torch.nn as nn


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        raise ValueError("boom in the user's forward")


def boom():
    return Boom()


def nan_weights():
    m = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
    with torch.no_grad():
        m[1].weight[0, 0] = float("nan")
    return m


def raises():
    raise RuntimeError("cannot build the model")


def not_a_module():
    return {"weights": 1}


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
'''


@pytest.fixture(scope="module")
def usermods(tmp_path_factory):
    d = tmp_path_factory.mktemp("usermods")
    (d / "skbad_models.py").write_text(FACTORIES)
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))


# --------------------------------------------------------------------------- the promise

runner = CliRunner()


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _scratch_left(*roots: Path) -> list[Path]:
    pid = os.getpid()
    out = []
    for r in (*roots, Path(tempfile.gettempdir())):
        out += [p for p in Path(r).rglob(".slimkit-*") if p.name.startswith((f".slimkit-tmp-{pid}-",
                                                                             f".slimkit-old-{pid}-"))]
    return out


def assert_refused(args, *, inputs: Path, pattern: str = "", marker: Path | None = None, extra=()):
    """Run ``slimkit ARGS``; assert exit 2 with one error line and that nothing was lost, written or run."""
    before = _snapshot(inputs)
    res = runner.invoke(app, ["--quiet", *map(str, args)])
    err = res.stderr
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert res.exit_code == 2, (res.exit_code, err, res.stdout)
    assert len(lines) == 1 and lines[0].startswith("slimkit: error:"), err
    assert "Traceback" not in err + res.stdout and res.stdout.strip() == "", (err, res.stdout)
    assert pattern.lower() in lines[0].lower(), lines[0]
    if marker is not None:
        assert not marker.exists(), "code from the model file ran"
    assert _snapshot(inputs) == before, "an input file changed"
    assert not _scratch_left(inputs, *extra), "a scratch folder was left behind"
    return lines[0]


# --------------------------------------------------------------------------- 1. no code from a model file

PT2_KINDS = ["sample_inputs", "use_pickle", "legacy_weights"]


@pytest.mark.parametrize("kind", PT2_KINDS)
@pytest.mark.parametrize("command", ["profile", "export"])
def test_crafted_pt2_never_runs_code(tmp_path, kind, command):
    src = tmp_path / "in"
    src.mkdir()
    marker = tmp_path / "PWNED"
    evil = craft_pt2(good_pt2(tmp_path / "good.pt2"), src / "evil.pt2", kind, marker)
    args = [command, evil, "--data", "zoo:digits"] + (["--out", tmp_path / "o.onnx"] if command == "export" else [])
    line = assert_refused(args, inputs=src, pattern="--trust-pickle", marker=marker)
    assert "could run code" in line
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("kind", PT2_KINDS)
def test_crafted_pt2_api_and_plain_torch(tmp_path, kind):
    """The payload is real (plain torch.export.load runs it), and slimkit.load_model refuses it."""
    from slimkit.core.errors import UnsafeFileError
    from slimkit.load import load_model

    marker = tmp_path / "PWNED"
    evil = craft_pt2(good_pt2(tmp_path / "good.pt2"), tmp_path / "evil.pt2", kind, marker)
    with pytest.raises(UnsafeFileError):
        load_model(str(evil))
    assert not marker.exists()
    if kind != "legacy_weights":  # torch ignores the legacy file when the new layout is present
        try:
            torch.export.load(str(evil))
        except Exception:  # noqa: BLE001 - it may fail after running the payload
            pass
        assert marker.exists(), "the crafted file should run code in plain torch.export.load"


def test_guard_blocks_unpickling_even_without_inspection(tmp_path):
    """Defence in depth: a layout the inspection would not know is still loaded by the weights-only unpickler."""
    from slimkit.core.safeload import no_unpickling

    marker = tmp_path / "PWNED"
    evil = craft_pt2(good_pt2(tmp_path / "good.pt2"), tmp_path / "evil.pt2", "sample_inputs", marker)
    with pytest.raises(Exception), no_unpickling():  # noqa: B017 - torch's own UnpicklingError
        torch.export.load(str(evil))
    assert not marker.exists()


def test_good_pt2_loads_and_trust_pickle_is_explicit(tmp_path):
    from slimkit.load import load_model

    good = good_pt2(tmp_path / "good.pt2")
    lm = load_model(str(good))
    x = torch.randn(3, 1, 16, 16)
    assert lm.model(x).shape == (3, 10)
    # --trust-pickle is the one door: with it, torch's own loader runs (and so does the payload)
    marker = tmp_path / "TRUSTED_RAN"
    evil = craft_pt2(good, tmp_path / "evil.pt2", "sample_inputs", marker)
    try:
        load_model(str(evil), trust_pickle=True)
    except Exception:  # noqa: BLE001 - the crafted sample inputs need not make a usable model
        pass
    assert marker.exists()


def test_full_pickle_pt_refused_without_flag(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    marker = tmp_path / "PWNED"
    torch.save(_Payload(str(marker)), src / "model.pt")
    assert_refused(["profile", src / "model.pt", "--data", "zoo:digits"], inputs=src, pattern="--trust-pickle",
                   marker=marker)


def _hf_folder(d: Path, **extra) -> Path:
    from transformers import BertConfig

    d.mkdir()
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    cfg.to_json_file(str(d / "config.json"))
    if extra:
        c = json.loads((d / "config.json").read_text())
        c.update(extra)
        (d / "config.json").write_text(json.dumps(c))
    return d


def test_hf_folder_with_remote_code_refused(tmp_path):
    src = _hf_folder(tmp_path / "hf", auto_map={"AutoModel": "modeling_evil.EvilModel"})
    (src / "modeling_evil.py").write_text(f"open({str(tmp_path / 'PWNED')!r}, 'w').write('x')\n")
    assert_refused(["profile", src], inputs=src, pattern="never runs code", marker=tmp_path / "PWNED")


def test_hf_folder_with_pickled_bin_refused(tmp_path):
    src = _hf_folder(tmp_path / "hf")
    marker = tmp_path / "PWNED"
    (src / "pytorch_model.bin").write_bytes(_pickle_bytes({"w": _Payload(str(marker))}))
    assert_refused(["profile", src], inputs=src, pattern="cannot load Hugging Face model", marker=marker)


# --------------------------------------------------------------------------- 2. never lose or overwrite a file

@pytest.fixture
def ins(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    return d


def test_export_refuses_to_overwrite_its_input(tmp_path, ins):
    good = good_pt2(ins / "model.pt2")
    assert_refused(["export", good, "--data", "zoo:digits", "--out", good], inputs=ins, pattern="input")


def test_export_refuses_a_users_file_and_force_replaces_it(tmp_path, ins):
    good = good_pt2(ins / "model.pt2")
    user = tmp_path / "notes.onnx"
    user.write_text("my own notes")
    assert_refused(["export", good, "--data", "zoo:digits", "--out", user], inputs=ins, pattern="--force")
    assert user.read_text() == "my own notes"
    res = runner.invoke(app, ["--quiet", "export", str(good), "--data", "zoo:digits", "--out", str(user), "--force"])
    assert res.exit_code == 0, res.stderr
    # a file slimkit wrote is replaced without --force (and the result is a loadable, stamped ONNX file)
    res = runner.invoke(app, ["--quiet", "export", str(good), "--data", "zoo:digits", "--out", str(user)])
    assert res.exit_code == 0, res.stderr
    import onnx

    props = {p.key: p.value for p in onnx.load(str(user)).metadata_props}
    assert props.get("generated_by", "").startswith("slimkit")


def test_export_out_is_a_directory(tmp_path, ins):
    good = good_pt2(ins / "model.pt2")
    (tmp_path / "adir").mkdir()
    assert_refused(["export", good, "--data", "zoo:digits", "--out", tmp_path / "adir"], inputs=ins,
                   pattern="is a folder")


def test_export_creates_missing_parents(tmp_path, ins):
    good = good_pt2(ins / "model.pt2")
    out = tmp_path / "new" / "deeper" / "m.onnx"
    res = runner.invoke(app, ["--quiet", "export", str(good), "--data", "zoo:digits", "--out", str(out)])
    assert res.exit_code == 0 and out.is_file(), res.stderr


def _report_folder(d: Path) -> Path:
    """A minimal, valid slimkit report.json (the shape compress writes)."""
    d.mkdir(parents=True, exist_ok=True)
    m = {"accuracy": 0.9, "size_bytes": 1000, "latency_ms_p50_b1": 1.0, "latency_ms_p50_bN": 10.0}
    rep = {"model": "zoo:x", "data": "digits", "recipe": {"name": "r", "stages": []}, "baseline": m,
           "compressed": dict(m, size_bytes=500), "ratios": {"size_bytes": 0.5}, "verdicts": [], "stages": []}
    (d / "report.json").write_text(json.dumps(rep))
    return d


def test_report_never_rewrites_its_input(tmp_path):
    d = _report_folder(tmp_path / "r")
    (d / "other.json").write_text((d / "report.json").read_text().replace('"r"', '"other"'))
    before = (d / "report.json").read_bytes(), (d / "other.json").read_bytes()
    res = runner.invoke(app, ["--quiet", "report", str(d / "other.json")])
    assert res.exit_code == 0, res.stderr
    assert ((d / "report.json").read_bytes(), (d / "other.json").read_bytes()) == before
    assert (d / "other.md").is_file() and (d / "other.html").is_file() and not (d / "report.md").exists()


@pytest.mark.parametrize("content,pattern", [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not a text file"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2, 3]", "not a slimkit report"),
    (b'{"baseline": {}, "compressed": {}, "recipe": {}}', "size_bytes"),
])
def test_report_bad_input_writes_nothing(tmp_path, content, pattern):
    d = tmp_path / "r"
    d.mkdir()
    (d / "report.json").write_bytes(content)
    assert_refused(["report", d], inputs=d, pattern=pattern)
    assert sorted(p.name for p in d.iterdir()) == ["report.json"]


def test_report_refuses_to_replace_a_users_markdown(tmp_path):
    d = _report_folder(tmp_path / "r")
    (d / "report.md").write_text("# my notes\n")
    assert_refused(["report", d], inputs=d, pattern="--force")


@pytest.mark.parametrize("case", ["empty", "input_folder", "users_folder"])
def test_compress_out_refusals(tmp_path, ins, usermods, case):
    good = good_pt2(ins / "model.pt2")
    if case == "empty":
        out, pattern = "", "empty"
    elif case == "input_folder":
        out, pattern = ins, "holds an input"
    else:
        out = tmp_path / "mine"
        out.mkdir()
        (out / "thesis.tex").write_text("do not lose me")
        pattern = "not a slimkit output"
    extra = [out] if out else []
    assert_refused(["compress", good, "--data", "zoo:digits", "--recipe", "profile-only", "--out", out],
                   inputs=ins, pattern=pattern, extra=extra)
    if case == "users_folder":
        assert (out / "thesis.tex").read_text() == "do not lose me"


def test_compress_replaces_an_earlier_run_whole(tmp_path, usermods):
    out = tmp_path / "out"
    args = ["--quiet", "compress", "skbad_models:tiny", "--data", "zoo:digits", "--recipe", "profile-only",
            "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.stderr
    (out / "stale-from-old-run.txt").write_text("old")  # e.g. a model.slim that the next recipe does not write
    first = json.loads((out / "report.json").read_text())
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.stderr
    assert not (out / "stale-from-old-run.txt").exists(), "two runs mixed in one folder"
    assert json.loads((out / "report.json").read_text())["recipe"] == first["recipe"]
    assert not _scratch_left(tmp_path)
    assert oct((out).stat().st_mode & 0o777) != oct(0o700)


def test_api_compress_restores_train_mode_on_success_and_failure(digits, usermods):
    import skbad_models

    from slimkit.core.errors import ConfigError
    from slimkit.pipeline import compress
    from slimkit.zoo.data import DataBundle

    m = skbad_models.tiny().train()
    compress(m, "profile-only", digits, measure=False)
    assert m.training and all(x.training for x in m.modules())
    m.eval()
    m[1].train()  # a mixed mode is given back as it was, also when the run fails part-way
    no_train = DataBundle("no-train", "classification", None, digits.test, num_classes=10)
    rec = {"version": 1, "name": "ft", "stages": [{"name": "s", "techniques": [], "finetune": {"epochs": 1}}]}
    with pytest.raises(ConfigError, match="needs train data"):
        compress(m, rec, no_train, measure=False)
    assert not m.training and m[1].training and not m[0].training


def test_api_technique_and_compare_keep_the_callers_mode(tmp_path, digits, usermods):
    import skbad_models

    import slimkit

    m = skbad_models.tiny().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    pruned = slimkit.prune(m, {"type": "prune.magnitude", "sparsity": 0.5}, digits)
    assert m.training and all(x.training for x in m.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()), "the user's weights changed"
    assert pruned is not m
    slimkit.compare([slimkit.Candidate("m", m)], digits, workdir=tmp_path / "w", timing=False, measure_memory=False)
    assert m.training


@pytest.mark.parametrize("command", ["export", "compress"])
def test_unwritable_location_is_refused_before_work(tmp_path, ins, monkeypatch, command):
    """Permission denied / read-only file system, as the check sees it (root passes os.access, so it is faked)."""
    from slimkit.core import io as sio

    good = good_pt2(ins / "model.pt2")
    monkeypatch.setattr(sio.os, "access", lambda p, mode: False)
    out = tmp_path / "locked" / ("m.onnx" if command == "export" else "o")
    args = [command, good, "--data", "zoo:digits", "--out", out] + (["--recipe", "demo"] if command == "compress"
                                                                     else [])
    t0 = time.perf_counter()
    assert_refused(args, inputs=ins, pattern="not writable")
    assert time.perf_counter() - t0 < 10 and not out.exists()


def test_atomic_write_on_a_full_disk_leaves_the_old_file(tmp_path, monkeypatch):
    """ENOSPC half-way through a write: one OutputError, the previous file intact, no temp file."""
    import errno

    from slimkit.core import io as sio
    from slimkit.core.errors import OutputError

    dest = tmp_path / "report.json"
    dest.write_text('{"old": true}')
    real_write = Path.write_text

    def full(self, data, *a, **kw):
        real_write(self, data[: len(data) // 2], *a, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OutputError, match="No space left"):
        sio.atomic_write_text(dest, json.dumps({"new": list(range(100))}))
    monkeypatch.undo()
    assert dest.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_report_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import errno

    d = _report_folder(tmp_path / "r")
    real_write = Path.write_text

    def full(self, data, *a, **kw):
        if self.name.startswith(".slimkit-tmp-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data, *a, **kw)

    monkeypatch.setattr(Path, "write_text", full)
    line = assert_refused(["report", d], inputs=d, pattern="No space left")
    assert "nothing was written" in line
    assert sorted(p.name for p in d.iterdir()) == ["report.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only-mode folders")
def test_read_only_output_is_refused_before_work(tmp_path, ins):
    good = good_pt2(ins / "model.pt2")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_refused(["export", good, "--data", "zoo:digits", "--out", ro / "m.onnx"], inputs=ins,
                       pattern="not writable")
        assert_refused(["compress", good, "--data", "zoo:digits", "--recipe", "profile-only", "--out", ro / "o"],
                       inputs=ins, pattern="not writable")
    finally:
        ro.chmod(0o755)


def test_output_location_under_a_file_is_refused_before_work(tmp_path, ins):
    good = good_pt2(ins / "model.pt2")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    t0 = time.perf_counter()
    assert_refused(["compress", good, "--data", "zoo:digits", "--recipe", "demo", "--out", blocker / "sub"],
                   inputs=ins, pattern="is a file")
    assert_refused(["export", good, "--data", "zoo:digits", "--out", blocker / "m.onnx"], inputs=ins,
                   pattern="is a file")
    assert time.perf_counter() - t0 < 10, "the check must come before the recipe runs"


# --------------------------------------------------------------------------- 4. options checked before work

@pytest.mark.parametrize("opts,pattern", [
    (["--batch", "-5"], "--batch"), (["--threads", "0"], "--threads"), (["--runs", "100000000"], "--runs"),
    (["--runs", "5"], "--runs"), (["--threads", "abc"], "--threads"),
])
def test_numeric_options(ins, opts, pattern):
    good = good_pt2(ins / "model.pt2")
    assert_refused(["profile", good, "--data", "zoo:digits", *opts], inputs=ins, pattern=pattern)


@pytest.mark.parametrize("args,pattern", [
    (["export", "zoo:digits-mlp"], "missing option"),
    (["compress", "zoo:digits-mlp", "--out", "x"], "missing option"),
    (["nosuchcommand"], "no such command"),
    (["export", "zoo:digits-mlp", "--out", "x.onnx", "--opset", "12"], "--opset"),
    (["bench", "zoo:digits-mlp"], "two or more"),
])
def test_usage_errors_are_one_line(tmp_path, args, pattern):
    assert_refused(args, inputs=tmp_path, pattern=pattern)


# --------------------------------------------------------------------------- 5. model files, data, recipes

@pytest.mark.parametrize("kind,pattern", [
    ("empty.onnx", "is empty"), ("truncated.onnx", "not a valid ONNX"), ("invalid_graph.onnx", "ONNX Runtime cannot"),
    ("unknown_op.onnx", "ONNX Runtime cannot"), ("empty.pt", "is empty"), ("empty.pt2", "is empty"),
    ("garbage.pt2", "not a readable torch.export"), ("garbage.pt", "not a readable PyTorch file"),
])
def test_bad_model_files(ins, kind, pattern):
    p = ins / kind
    stem = kind.split(".")[0]
    if p.suffix == ".onnx":
        onnx_file(p, stem)
    else:
        p.write_bytes(b"" if stem == "empty" else b"this is not a model" * 10)
    assert_refused(["profile", p, "--data", "zoo:digits"], inputs=ins, pattern=pattern)


@pytest.mark.parametrize("factory,pattern", [
    ("skbad_models:raises", "raised RuntimeError"), ("skbad_models:not_a_module", "not an nn.Module"),
    ("os:system", "raised TypeError"), ("skbad_models:nan_weights", "'1.weight' holds 1 NaN"),
    ("skbad_models:boom", "forward raised ValueError"), ("nosuchpkg_xyz.mod:f", "cannot import"),
])
def test_bad_model_factories(tmp_path, usermods, factory, pattern):
    line = assert_refused(["profile", factory, "--data", "zoo:digits"], inputs=tmp_path, pattern=pattern)
    if factory.endswith(":boom"):
        assert "skbad_models.py:" in line, "the error should point at the user's code"


def _npz(p: Path, **arrays) -> Path:
    np.savez(p, **arrays)
    return p


X = np.random.default_rng(0).normal(size=(40, 1, 16, 16)).astype(np.float32)
Y = np.arange(40) % 10


@pytest.mark.parametrize("arrays,pattern", [
    ({"x": np.array(["a", "b", "c"]), "y": np.array([0, 1, 2])}, "numeric"),
    ({"x": X, "y": Y, "x_test": X[:0], "y_test": Y[:0]}, "empty"),
    ({"x": np.float32(3.0), "y": np.int64(1)}, "0-d"),
    ({"x": X, "y": Y - 5}, "negative"),
    ({"x": X, "y": np.where(Y == 3, np.nan, Y).astype(np.float64)}, "NaN"),
    ({"x": X, "y": Y + 0.5}, "whole numbers"),
    ({"y": Y}, "no array 'x'"),
])
def test_bad_npz_data(ins, usermods, arrays, pattern):
    p = _npz(ins / "d.npz", **arrays)
    assert_refused(["profile", "skbad_models:tiny", "--data", f"npz:{p}"], inputs=ins, pattern=pattern)


def test_npz_object_array_needs_no_pickle(ins, usermods):
    p = ins / "obj.npz"
    np.savez(p, x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    assert_refused(["profile", "skbad_models:tiny", "--data", f"npz:{p}"], inputs=ins, pattern="object arrays")


def _png_folder(root: Path, corrupt: str = "") -> Path:
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8)).save(root / c / f"{i}.png")
    if corrupt == "garbage":
        (root / "a" / "bad.png").write_bytes(b"not a png at all")
    if corrupt == "truncated":
        good = (root / "a" / "0.png").read_bytes()
        (root / "a" / "cut.png").write_bytes(good[: len(good) // 2])
    return root


@pytest.mark.parametrize("spec,pattern", [
    ("folder:{d}/imgs_garbage", "cannot read image"), ("folder:{d}/imgs_truncated", "cannot read image"),
    ("folder:{d}/imgs_ok?size=abc", "size must be a whole number"), ("idx:{d}/idx", "truncated"),
    ("folder:{d}/nope", "not found"), ("zoo:nosuch", "unknown zoo data set"), ("bogus", "bad DATA spec"),
])
def test_bad_data_specs(ins, usermods, spec, pattern):
    _png_folder(ins / "imgs_garbage", "garbage")
    _png_folder(ins / "imgs_truncated", "truncated")
    _png_folder(ins / "imgs_ok")
    (ins / "idx").mkdir()
    for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte"):
        (ins / "idx" / n).write_bytes(b"\x00\x00\x08\x03\x00\x00")  # header cut inside the dimension sizes
    assert_refused(["profile", "skbad_models:tiny", "--data", spec.format(d=ins)], inputs=ins, pattern=pattern)


@pytest.mark.parametrize("text,pattern", [
    ("stages:\n  - name: s\n    techniques: []\n    finetune: {epochs: ten}\n",
     "Finetune.epochs: expected a whole number, got 'ten'"),
    ("seed: abc\nstages: []\n", "recipe.seed: expected a whole number"),
    ("stages:\n  - name: s\n    techniques:\n      - {type: prune.magnitude, sparsity: lots}\n",
     "sparsity: expected a number, got 'lots'"),
    ("stages: [\n  {name: s\n", "line 3"),
    ("stages:\n  - techniques:\n      - {type: prune.magnitud}\n", "prune.magnitud"),
])
def test_bad_recipes(tmp_path, ins, text, pattern):
    r = ins / "r.yaml"
    r.write_text(text)
    assert_refused(["compress", "zoo:digits-mlp", "--recipe", r, "--out", tmp_path / "o"], inputs=ins,
                   pattern=pattern)
    assert not (tmp_path / "o").exists()


def test_binary_recipe_file(tmp_path, ins):
    r = ins / "r.yaml"
    r.write_bytes(b"\xff\xfe\x00\x81binary")
    assert_refused(["compress", "zoo:digits-mlp", "--recipe", r, "--out", tmp_path / "o"], inputs=ins,
                   pattern="cannot read recipe")


def test_checkpoint_dir_that_is_a_file(tmp_path, ins):
    f = ins / "ckpt"
    f.write_text("x")
    assert_refused(["compress", "zoo:digits-mlp", "--recipe", "profile-only", "--out", tmp_path / "o",
                    "--checkpoint-dir", f], inputs=ins, pattern="is a file")


@pytest.mark.parametrize("call,pattern", [
    (lambda m, d: __import__("slimkit.pipeline", fromlist=["compress"]).compress(m, 42, d), "recipe must be"),
    (lambda m, d: __import__("slimkit.pipeline", fromlist=["compress"]).compress("m", "demo", d), "nn.Module"),
    (lambda m, d: __import__("slimkit.pipeline", fromlist=["compress"]).compress(m, "demo", [1, 2]), "DataBundle"),
    (lambda m, d: __import__("slimkit.pipeline", fromlist=["compress"]).compress(m, "demo", d, runs=0), "--runs"),
])
def test_api_wrong_argument_types(digits, usermods, call, pattern):
    import skbad_models

    from slimkit.core.errors import ConfigError

    with pytest.raises(ConfigError, match=pattern):
        call(skbad_models.tiny(), digits)


# --------------------------------------------------------------------------- 3. signals: SIGTERM cleans up, SIGKILL is swept

def _slimkit_proc(args, cwd):
    env = dict(os.environ, SLIMKIT_QUIET="1")
    # as an interactive shell starts it: a background job (pytest run with `&`) has SIGINT ignored, which children
    # inherit and Python then keeps (the POSIX convention for background jobs)
    return subprocess.Popen([sys.executable, "-m", "slimkit.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_scratch(root: Path, proc, timeout=120) -> Path:
    t0 = time.time()
    while time.time() - t0 < timeout:
        hits = list(root.glob(f".slimkit-tmp-{proc.pid}-*"))
        if hits:
            return hits[0]
        if proc.poll() is not None:
            raise AssertionError(f"slimkit ended before its scratch folder appeared: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("no scratch folder appeared")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_clean_up(tmp_path, digits_mlp, sig):
    work = tmp_path / "work"
    work.mkdir()
    p = _slimkit_proc(["compress", "zoo:digits-mlp", "--recipe", "profile-only", "--out", work / "out",
                       "--runs", "5000"], tmp_path)
    _wait_for_scratch(work, p)
    time.sleep(0.5)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == (143 if sig == signal.SIGTERM else 130), err
    assert "temporary files removed" in err and "Traceback" not in err, err
    assert list(work.iterdir()) == [], list(work.iterdir())


def test_sigkill_leftovers_are_swept_by_the_next_run(tmp_path, digits_mlp):
    work = tmp_path / "work"
    work.mkdir()
    p = _slimkit_proc(["compress", "zoo:digits-mlp", "--recipe", "profile-only", "--out", work / "out",
                       "--runs", "5000"], tmp_path)
    left = _wait_for_scratch(work, p)
    p.kill()
    p.wait(timeout=60)
    assert left.exists()  # SIGKILL cannot be caught
    res = runner.invoke(app, ["--quiet", "export", "zoo:digits-mlp", "--out", str(work / "m.onnx")])
    assert res.exit_code == 0, res.stderr
    assert not left.exists(), "the stale scratch folder of a dead process should be swept"


def test_live_processes_scratch_is_not_swept(tmp_path):
    from slimkit.core.io import scratch_dir, sweep_stale

    mine = scratch_dir(tmp_path)
    dead = tmp_path / ".slimkit-tmp-999999999-1-abc"
    dead.mkdir()
    removed = sweep_stale(tmp_path)
    assert mine.exists() and not dead.exists() and removed == [dead]


# --------------------------------------------------------------------------- 6. resume says what it does

def test_resume_says_so(tmp_path, digits_mlp, capsys):
    from slimkit.core.progress import set_quiet
    from slimkit.load import resolve
    from slimkit.pipeline import compress

    rec = {"version": 1, "name": "ft", "stages": [{"name": "tune", "techniques": [],
                                                   "finetune": {"method": "kd", "epochs": 1}}]}
    lm, data = resolve("zoo:digits-mlp")
    compress(lm.model, rec, data, measure=False, checkpoint_dir=tmp_path / "ck")
    set_quiet(False)
    try:
        compress(lm.model, rec, data, measure=False, checkpoint_dir=tmp_path / "ck")
    finally:
        set_quiet(True)
    err = capsys.readouterr().err
    assert "resuming stage tune from epoch 1 of 1" in err, err
    other = dict(rec, stages=[dict(rec["stages"][0], finetune={"method": "kd", "epochs": 2, "lr": 0.01})])
    from slimkit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="different model or fine-tune"):
        compress(lm.model, other, data, measure=False, checkpoint_dir=tmp_path / "ck")
