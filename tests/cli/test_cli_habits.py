"""The command line's habits: --version, -h, flags after the subcommand, list that never truncates, recipe check,
dry runs, did-you-mean, readable bench labels, JSON output, and a --help that does not import torch."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slimkit.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def cli(*args):
    return runner.invoke(app, list(map(str, args)))


def test_version_and_short_help():
    import slimkit

    res = cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"slimkit {slimkit.__version__}"
    for args in (["-h"], ["compress", "-h"], ["recipe", "check", "-h"], ["compare", "-h"]):
        res = cli(*args)
        assert res.exit_code == 0 and "Usage:" in res.stdout, args


def test_help_does_not_import_torch():
    """What makes `slimkit --help` fast: the CLI module and the package import no torch until a command runs."""
    code = "import sys, slimkit.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    out = subprocess.run([sys.executable, "-m", "slimkit.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "compare" in out.stdout


def test_quiet_and_verbose_after_the_subcommand(tmp_path):
    res = cli("list", "--json", "-q")
    assert res.exit_code == 0 and json.loads(res.stdout)["techniques"]
    res = cli("recipe", "check", "demo", "--verbose")
    assert res.exit_code == 0 and "valid" in res.stdout
    os.environ.pop("SLIMKIT_DEBUG", None)


def test_list_never_truncates_names_when_piped():
    env = dict(os.environ, COLUMNS="60")
    names = json.loads(subprocess.run([sys.executable, "-m", "slimkit.cli", "list", "--json"], capture_output=True,
                                      text=True, env=env, check=True).stdout)["techniques"]
    out = subprocess.run([sys.executable, "-m", "slimkit.cli", "list"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and len(names) >= 10
    for name in names:
        assert re.search(rf"\b{re.escape(name)}\b", out.stdout), name
    assert "…" not in out.stdout.split("zoo models")[0]
    d = json.loads(cli("list", "--json").stdout)
    assert d["recipes"]["prune-structured-50"].startswith("Remove channels")


def test_recipe_check_and_dry_run(tmp_path):
    res = cli("recipe", "check", "prune-structured-50", "--json")
    d = json.loads(res.stdout)
    assert d["stages"][0]["techniques"][0]["type"] == "prune.structured"
    assert d["stages"][0]["techniques"][0]["target_macs"] == 0.5  # defaults resolved
    assert "prune/prune.structured" in d["needs"]
    out = tmp_path / "o"
    res = cli("compress", "zoo:digits-mlp", "--recipe", "demo", "--out", out, "--dry-run")
    assert res.exit_code == 0 and "nothing was run" in res.stdout and not out.exists()
    bad = tmp_path / "r.yaml"
    bad.write_text("stages:\n  - techniques:\n      - {type: prune.structured, target_macs: half}\n")
    res = cli("recipe", "check", bad)
    assert res.exit_code == 2
    assert "StructuredPruneConfig.target_macs: expected a number, got 'half'" in res.stderr


@pytest.mark.parametrize("args,hint", [
    (["recipe", "check", "prune-structured-5"], "did you mean 'prune-structured-50'?"),
    (["profile", "zoo:digits-cn"], "did you mean 'digits-cnn'?"),
])
def test_did_you_mean(args, hint):
    res = cli(*args)
    assert res.exit_code == 2 and hint in res.stderr, res.stderr


def test_bench_labels_and_json(tmp_path, digits_mlp):
    a = tmp_path / "a"
    res = cli("-q", "export", "zoo:digits-mlp", "--out", a / "model.onnx", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["parity"]["ok"] is True
    b = tmp_path / "b"
    cli("-q", "export", "zoo:digits-mlp", "--out", b / "model.onnx")
    res = cli("-q", "bench", f"fp32={a / 'model.onnx'}", f"again={b / 'model.onnx'}", "--data", "zoo:digits",
              "--json", "--runs", "20")
    assert res.exit_code == 0, res.stderr
    d = json.loads(res.stdout)
    assert list(d["metrics"]) == ["fp32", "again"] and "again" in d["ratios"]
    # without labels, two files of one name read as folder/name
    res = cli("-q", "bench", a / "model.onnx", b / "model.onnx", "--data", "zoo:digits", "--json", "--runs", "20")
    assert list(json.loads(res.stdout)["metrics"]) == ["a/model.onnx", "b/model.onnx"]


def test_compress_json_output(tmp_path, digits_mlp):
    res = cli("-q", "compress", "zoo:digits-mlp", "--recipe", "profile-only", "--out", tmp_path / "o", "--json")
    assert res.exit_code == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["baseline"]["accuracy"] > 0.9 and d["recipe"]["name"] == "profile-only"
    assert "latency_ms_quantiles_b1" in d["compressed"] and d["created"]


@pytest.mark.slow
def test_readme_python_snippet_runs_as_written(tmp_path, monkeypatch, digits_cnn):
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(snippet, "README.md", "exec"), ns)  # noqa: S102 - the project's own README
    assert (tmp_path / "out" / "report.html").is_file()
    assert ns["r"]["ratios"]["pruned+KD"]["macs"] < 0.75


def test_building_a_hugging_face_model_prints_nothing_from_its_lazy_imports():
    """transformers imports torchao (installed with the runtimes) when a model class is first touched; torchao then
    logged "Failed to load ...so" for each CUDA kernel library a CPU build lacks, and torch a pytree deprecation
    per enum: noise on every command that loads a Hugging Face model."""
    pytest.importorskip("transformers")
    code = ("from slimkit.zoo.foreign import _hf_image, _hf_text\n"
            "_hf_image('mobilenetv2'); _hf_text('bert'); print('built')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "built"
    assert "Failed to load" not in out.stderr and "_pytree" not in out.stderr, out.stderr[-500:]
