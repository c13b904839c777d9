"""The slimkit command line: thin wrappers over the Python API."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer import _click as click  # typer >= 0.24 vendors click: its exceptions live here
from typer.core import TyperGroup

from .core.errors import ConfigError, SlimkitError, first_line
from .core.progress import info, set_quiet
from .report.writer import jsonable


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so every ``finally`` (scratch folders, temp files) runs on the way out."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    from .core.io import INTERRUPTED

    INTERRUPTED[0] = True
    raise Terminated()


def _on_sigint(signum, frame):  # noqa: ARG001
    from .core.io import INTERRUPTED

    INTERRUPTED[0] = True
    raise KeyboardInterrupt


class _Group(TyperGroup):
    """Usage errors (a missing option, a bad value) read like every other error: one ``slimkit: error:`` line and
    exit code 2; SIGTERM is handled like SIGINT."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        import threading

        from .core.io import INTERRUPTED

        INTERRUPTED[0] = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, _on_sigint)
        args = _global_flags(list(sys.argv[1:] if args is None else args))
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except click.exceptions.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "slimkit"
            click.echo(f"slimkit: error: {where}: {first_line(Exception(e.format_message()))} (see {where} --help)",
                       err=True)
            rv = 2
        except click.exceptions.ClickException as e:
            click.echo(f"slimkit: error: {first_line(Exception(e.format_message()))}", err=True)
            rv = 2
        except (typer.Abort, KeyboardInterrupt):
            click.echo("slimkit: interrupted; no artifacts were written", err=True)
            rv = 130
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _global_flags(args: list[str]) -> list[str]:
    """-q/--quiet and -v/--verbose work before or after the subcommand (up to a '--')."""
    out, rest = [], []
    if "--" in args:
        i = args.index("--")
        args, rest = args[:i], args[i:]
    for a in args:
        if a in ("-q", "--quiet"):
            set_quiet(True)
        elif a in ("-v", "--verbose"):
            os.environ["SLIMKIT_DEBUG"] = "1"  # tracebacks for internal errors, status lines on
            set_quiet(False)
        else:
            out.append(a)
    return out + rest


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="slimkit: make trained PyTorch models small and fast, and prove it with measurements.\n\n"
                       "MODEL is zoo:NAME, pkg.module:factory, FILE.pt2 (torch.export), a local Hugging Face "
                       "folder, or FILE.pt with --trust-pickle. DATA is zoo:NAME, npz:FILE (arrays x, y), "
                       "folder:DIR (image folder), idx:DIR (MNIST idx files) or pkg.module:function. Nothing is "
                       "downloaded.")

DATA_HELP = "Data spec: zoo:NAME | npz:FILE | folder:DIR | idx:DIR | pkg.module:function (default: the model's own)."
THREADS_HELP = "Threads for PyTorch and ONNX Runtime during timing (fixed and reported)."
BATCH_HELP = "Batch size N for the batch-N latency (default: 360 for classifiers, capped by the test set; 32 for text)."


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"slimkit: error: {msg}", err=True)
    raise typer.Exit(code)


def _guard(fn):
    """Every command's errors, handled once: slimkit's own errors and OS errors (a missing file, a full disk) are
    one line with exit 2; SIGINT/SIGTERM exit 130/143 after the scratch folders are gone; anything else is a bug
    in slimkit, reported in one line (exit 1; SLIMKIT_DEBUG=1 shows the traceback)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        from .core.io import INTERRUPTED

        try:
            rv = fn(*a, **kw)
            if INTERRUPTED[0]:  # an interrupt that a library swallowed (e.g. inside an import) after the last write
                typer.echo("slimkit: interrupted; what this command wrote before is complete", err=True)
                raise typer.Exit(130)
            return rv
        except SlimkitError as e:
            if INTERRUPTED[0]:
                typer.echo("slimkit: interrupted; temporary files removed, no artifacts were written", err=True)
                raise typer.Exit(130)
            _fail(first_line(e, 400))
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            _fail(f"{where}{e.strerror or first_line(e)}")
        except Terminated:
            typer.echo("slimkit: terminated (SIGTERM); temporary files removed, no artifacts were written", err=True)
            raise typer.Exit(143)
        except KeyboardInterrupt:
            typer.echo("slimkit: interrupted; temporary files removed, no artifacts were written", err=True)
            raise typer.Exit(130)
        except typer.Exit:
            raise
        except Exception as e:  # noqa: BLE001 - the last line of defence against a traceback
            if INTERRUPTED[0]:  # e.g. "ImportError: initialization failed": an interrupt during an import
                typer.echo("slimkit: interrupted; temporary files removed, no artifacts were written", err=True)
                raise typer.Exit(130)
            if os.environ.get("SLIMKIT_DEBUG"):
                raise
            _fail(f"internal error ({type(e).__name__}: {first_line(e)}); this is a slimkit bug: rerun with "
                  "SLIMKIT_DEBUG=1 for the traceback and report it", code=1)

    return wrapper


def _spec_paths(*specs: Optional[str]) -> list[Path]:
    """The files and folders that MODEL / DATA / recipe specs read (so no output ever replaces them)."""
    out = []
    for spec in specs:
        if not spec:
            continue
        spec = str(spec)
        kind, sep, rest = spec.partition(":")
        if sep and kind in ("npz", "folder", "idx", "hf-sentences"):
            out.append(Path(rest.partition("?")[0]))
        elif Path(spec).exists():
            out.append(Path(spec))
    return out


def _start(*out_parents) -> None:
    """At the start of every command that works: sweep scratch folders of slimkit runs that were killed."""
    from .core.io import sweep_stale

    sweep_stale(None, *out_parents)


def _options(threads: int = 1, batch: Optional[int] = None, runs: int = 30) -> None:
    from .pipeline.runner import check_options

    check_options(threads=threads, batch=batch, runs=runs)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"slimkit {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or status lines (also after the "
                                                                  "subcommand)."),
         verbose: bool = typer.Option(False, "--verbose", "-v", help="Status lines, and the traceback of an internal "
                                                                     "error (also after the subcommand)."),
         version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    if quiet:
        set_quiet(True)


def _recipe_descriptions() -> dict[str, str]:
    import yaml

    out = {}
    for p in sorted((Path(__file__).parent / "recipes").glob("*.yaml")):
        try:
            out[p.stem] = str((yaml.safe_load(p.read_text()) or {}).get("description", ""))
        except (OSError, yaml.YAMLError):
            out[p.stem] = ""
    return out


@app.command("list")
@_guard
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables.")) -> None:
    """List registered techniques, zoo models, data sets and built-in recipes.

    Techniques are what recipes name in their `type:` keys; zoo models and data
    sets are used as zoo:NAME; recipes by name or as recipes/NAME.yaml. Names
    are never shortened, at any terminal width or when piped.

    \b
    Examples:
      slimkit list
      slimkit list --json | jq .techniques
    """
    from .core.registry import list_techniques
    from .zoo.registry import ZOO, ZOO_DATA_SUMMARY

    recipes = _recipe_descriptions()
    techs = list_techniques()
    if as_json:
        typer.echo(json.dumps({"techniques": {t.name: {"summary": t.summary, "needs": list(t.needs)} for t in techs},
                               "zoo": {k: v.summary for k, v in ZOO.items()}, "data": ZOO_DATA_SUMMARY,
                               "recipes": recipes}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 140)

    def tbl(title, cols, rows):
        t = Table(title=title, title_justify="left", expand=False)
        first = max([len(str(r[0])) for r in rows] + [len(cols[0])])
        t.add_column(cols[0], no_wrap=True, min_width=first)  # the names users copy are never cut
        for c in cols[1:]:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*map(str, r))
        con.print(t)

    tbl("techniques (type: in a recipe)", ["type", "needs", "summary"],
        [(t.name, ", ".join(t.needs) or "-", t.summary) for t in techs] or [("(none yet)", "", "")])
    tbl("zoo models (zoo:NAME)", ["name", "data", "summary"], [(k, v.data or "(yours)", v.summary) for k, v in ZOO.items()])
    tbl("data sets (zoo:NAME)", ["name", "summary"], list(ZOO_DATA_SUMMARY.items()))
    tbl("recipes (--recipe NAME)", ["name", "description"], list(recipes.items()))


recipe_app = typer.Typer(help="Work with recipes without running them.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")


def _resolved(rec) -> dict:
    """What a recipe will do: its stages with every technique's resolved config and needs."""
    return {**rec.to_dict(), "needs": {k: sorted(v) for k, v in rec.needs().items()}}


@recipe_app.command("check")
@_guard
def recipe_check(path: str = typer.Argument(..., help="A recipe YAML file, or a built-in recipe name."),
                 as_json: bool = typer.Option(False, "--json", help="Print the resolved recipe as JSON.")) -> None:
    """Validate a recipe and print its resolved stages (every default filled in) without running anything.

    \b
    Examples:
      slimkit recipe check my-recipe.yaml
      slimkit recipe check prune-structured-50 --json
    """
    from .pipeline.recipe import Recipe

    rec = Recipe.load(path)
    _print_recipe(rec, as_json)


def _print_recipe(rec, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(_resolved(rec), indent=2))
        return
    typer.echo(f"recipe {rec.name}: valid; {len(rec.stages)} stage(s), seed {rec.seed}")
    for s in rec.stages:
        typer.echo(f"- stage {s.name}:")
        for t in s.techniques:
            cfg = {k: v for k, v in t.config.to_dict().items() if k != "version"}
            typer.echo(f"    {t.type}: " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
        if s.finetune is not None:
            ft = {k: v for k, v in s.finetune.to_dict().items() if k != "version"}
            typer.echo("    finetune: " + ", ".join(f"{k}={v}" for k, v in ft.items()))
    needs = sorted({n for v in rec.needs().values() for n in v})
    typer.echo("needs: " + (", ".join(n.replace("_", " ") for n in needs) or "nothing but the model"))


def _print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from .report.writer import ROWS, fmt

    labels = list(result["metrics"])
    t = Table(title=f"{result['settings']['data']}: {result['settings']['threads']} thread(s), batch N = "
                    f"{result['settings']['batch_N']}", title_justify="left")
    t.add_column("metric")
    for lbl in labels:
        t.add_column(lbl, justify="right")
    for key, label, kind in ROWS:
        if any(key in result["metrics"][lbl] for lbl in labels):
            t.add_row(label, *[fmt(result["metrics"][lbl].get(key), kind) for lbl in labels])
    con = Console()
    con.print(t)
    for lbl, r in result.get("ratios", {}).items():
        parts = [f"{k}={v:.2f}x" for k, v in r.items() if not k.endswith("_delta")]
        con.print(f"[bold]{lbl} / {result['baseline']}[/bold]: " + ", ".join(parts))
        for v in result["verdicts"][lbl]:
            con.print(f"  - {v}")


@app.command()
@_guard
def profile(model: str = typer.Argument(..., help="MODEL spec (see slimkit --help)."),
            data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
            as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
            threads: int = typer.Option(1, "--threads", help=THREADS_HELP),
            batch: Optional[int] = typer.Option(None, "--batch", help=BATCH_HELP),
            runs: int = typer.Option(30, "--runs", min=20, help="Timed runs at batch 1 (>= 20, after warm-up)."),
            runtime: str = typer.Option("ort", "--runtime", help="Runtimes to measure side by side: ort, litert, "
                                                                 "litert-builtin, tflm, executorch (comma-separated)."),
            int8: bool = typer.Option(False, "--int8", help="Also measure a fully-int8 artifact in each runtime "
                                                           "(PT2E, calibrated on the data's calibration split)."),
            precision: Optional[str] = typer.Option(None, "--precision", help="With --runtime: the precisions to "
                                                    "measure where a runtime exports them (comma-separated): fp32, "
                                                    "int8, and for LiteRT int8-dynamic, int8-weights, fp16."),
            board: Optional[str] = typer.Option(None, "--board", help="For tflm: a board to check the fit against "
                                                                      "(cortex-m4, cortex-m7, esp32-s3, or "
                                                                      "ram=256KB,flash=1MB)."),
            trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow unpickling a full-model .pt file "
                                                                           "(runs code from the file: only for files you trust).")) -> None:
    """Profile one model: task metric, params, MACs, ONNX size, latency (PyTorch and ONNX Runtime, batch 1 and N),
    peak memory and an energy estimate.

    The model is exported to ONNX (parity-checked) so that size and ONNX Runtime
    numbers describe the deployable file. Peak memory is that of a separate
    ONNX Runtime process. Energy is an estimate from counted MACs and weight bytes.

    \b
    Examples:
      slimkit profile zoo:digits-cnn
      slimkit profile zoo:minilm --json > minilm.json
      slimkit profile mypkg.models:build --data npz:data.npz --threads 2
    """
    from .evaluate.compare import Candidate
    from .load import resolve

    _options(threads, batch, runs)
    if runtime != "ort" or int8 or board or precision:
        return _profile_runtimes(model, data, runtime, int8, board, threads, batch, runs, as_json, trust_pickle,
                                 precision)
    _start()
    lm, bundle = resolve(model, data, trust_pickle=trust_pickle)
    _measure([Candidate(lm.name, lm.model, lm.onnx_path)], bundle, threads, batch, runs, as_json)


def _profile_runtimes(model, data, runtime, int8, board, threads, batch, runs, as_json, trust_pickle,
                      precision=None) -> None:
    from .core.io import scratch
    from .evaluate.runtimes import measure_runtimes
    from .load import resolve
    from .runtimes import parse_runtimes
    from .runtimes.base import parse_precisions
    from .runtimes.tflm import board as parse_board

    rts = parse_runtimes(runtime)  # installed? (before any work)
    precs = parse_precisions(precision, rts)
    b = parse_board(board) if board else None
    _start()
    lm, bundle = resolve(model, data, trust_pickle=trust_pickle)
    if lm.model is None:
        raise SlimkitError("--runtime needs a PyTorch model (each runtime's artifact is exported from it)")
    with scratch() as d:
        res = measure_runtimes(lm.model, bundle, rts, workdir=d, threads=threads, batch=batch, runs=runs, int8=int8,
                               board=b, precisions=precs)
    if as_json:
        typer.echo(json.dumps(jsonable(res), indent=2))
        return
    from .report.writer import fmt

    key = res["metric"]
    kind = "pct" if key == "accuracy" else "f4"
    base = res["baseline"]
    typer.echo(f"{lm.name} on {bundle.name}: {threads} thread(s), batch N = {res['settings']['batch_N']}; ratios vs "
               f"{base}; peak mem: a fresh process running the batch-1 artifact, above the runtime's imports")
    typer.echo(f"{'artifact':<22} {key:>10} {'size':>10} {'b1 ms':>9} {'b1 x':>7} {'bN ms':>9} {'bN x':>7} "
               f"{'peak mem':>10} {'arena':>9}")
    for lbl, m in res["rows"].items():
        r = m.get("vs_" + base.replace(" ", "_"), {})
        typer.echo(f"{lbl:<22} {fmt(m.get(key), kind):>10} {fmt(m['size_bytes'], 'bytes'):>10} "
                   f"{m.get('latency_ms_p50_b1', float('nan')):>9.3f} {r.get('latency_ms_p50_b1', float('nan')):>6.2f}x "
                   f"{m.get('latency_ms_p50_bN', float('nan')):>9.3f} {r.get('latency_ms_p50_bN', float('nan')):>6.2f}x "
                   f"{fmt(m.get('peak_mem_delta_bytes_b1'), 'bytes') if m.get('peak_mem_delta_bytes_b1') else '':>10} "
                   f"{fmt(m.get('arena_bytes'), 'bytes') if m.get('arena_bytes') else '':>9}")
        if m.get("board"):
            typer.echo(f"  {m['board']['verdict']}")


def _measure(cands, bundle, threads: int, batch: Optional[int], runs: int, as_json: bool) -> None:
    """Shared by profile and bench: measure side by side in a scratch folder, print JSON or a table."""
    from .core.io import scratch
    from .evaluate.compare import compare

    with scratch() as d:
        res = compare(cands, bundle, workdir=d, threads=threads, batch=batch, runs=runs)
    if as_json:
        typer.echo(json.dumps(jsonable(res), indent=2))
    else:
        _print_table(res)


@app.command()
@_guard
def bench(models: List[str] = typer.Argument(..., help="Two or more MODEL specs or .onnx files, each optionally "
                                                       "NAME=SPEC to label it; the first is the baseline."),
          data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
          threads: int = typer.Option(1, "--threads", help=THREADS_HELP),
          batch: Optional[int] = typer.Option(None, "--batch", help=BATCH_HELP),
          runs: int = typer.Option(30, "--runs", min=20, help="Timed runs at batch 1 (>= 20, after warm-up)."),
          as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
          trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow unpickling full-model .pt files.")) -> None:
    """Measure several models side by side, timed interleaved in the same run, with ratios against the first.

    Absolute times on shared machines drift by 10-40%; timing the candidates
    round-robin in one process makes the ratios trustworthy. Each ratio is
    candidate / baseline, and a plain verdict says whether it really changed.

    \b
    Examples:
      slimkit bench zoo:digits-cnn out/model.onnx --data zoo:digits
      slimkit bench fp32=a/baseline.onnx int8=a/model.onnx peer=peer.onnx --data zoo:minilm --batch 1
    """
    from .evaluate.compare import Candidate
    from .load import load_data, load_model

    if len(models) < 2:
        raise ConfigError("bench compares two or more models (the first is the baseline); use slimkit profile for one")
    _options(threads, batch, runs)
    _start()
    named = [_label(m) for m in models]
    loaded = [load_model(spec, trust_pickle=trust_pickle) for _, spec in named]
    # without --data, the first model that has its own data set decides (load_data explains when none has)
    bundle = load_data(data, model=next((lm for lm in loaded if lm.default_data), None))
    labels, cands = set(), []
    for i, ((name, _), lm) in enumerate(zip(named, loaded)):
        lbl = name or _readable(lm, loaded)
        if lbl in labels:
            if name:
                raise ConfigError(f"bench label {name!r} is used twice; give each model its own NAME=")
            lbl = f"{lbl} ({i + 1})"
        labels.add(lbl)
        cands.append(Candidate(lbl, lm.model, lm.onnx_path))
    _measure(cands, bundle, threads, batch, runs, as_json)


def _label(spec: str) -> tuple[str, str]:
    """'name=spec' -> (name, spec); a plain spec -> ('', spec)."""
    name, sep, rest = spec.partition("=")
    if sep and name and rest and not any(ch in name for ch in ":/\\") and not Path(spec).exists():
        return name, rest
    return "", spec


def _readable(lm, loaded) -> str:
    """A label people can read: the file name, with its folder when two files share a name (out/model.onnx)."""
    same = [x for x in loaded if x.name == lm.name]
    if len(same) > 1 and (lm.onnx_path or Path(lm.spec).exists()):
        p = Path(lm.spec)
        return f"{p.parent.name}/{p.name}" if p.parent.name else p.name
    return lm.name


@app.command()
@_guard
def export(model: str = typer.Argument(..., help="MODEL spec."),
           out: Path = typer.Option(..., "--out", "-o", help="Destination .onnx file (written atomically)."),
           data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " Used for example inputs and the parity check."),
           opset: int = typer.Option(17, "--opset", min=17, max=21, help="ONNX opset (17-21)."),
           force: bool = typer.Option(False, "--force", help="Replace an existing file that slimkit did not write "
                                                             "(an input is never replaced)."),
           as_json: bool = typer.Option(False, "--json", help="Print the result (file, size, parity) as JSON."),
           runtime: str = typer.Option("ort", "--runtime", help="ort (ONNX), litert (.tflite), executorch (.pte) or "
                                                                "tflm (int8 .tflite plus OUT_data.cc/.h for firmware)."),
           int8: bool = typer.Option(False, "--int8", help="litert/executorch: a fully-int8 artifact (the runtime's "
                                                           "PT2E quantizer, calibrated on the data's calibration split)."),
           precision: Optional[str] = typer.Option(None, "--precision", help="litert: fp32, int8 (= --int8), "
                                                   "int8-dynamic, int8-weights or fp16 (weights for embedding models)."),
           batch: int = typer.Option(1, "--batch", min=1, help="litert/tflm/executorch: the batch size the artifact is "
                                                               "exported for (static)."),
           trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow unpickling a full-model .pt file.")) -> None:
    """Export to ONNX (dynamic batch) and check parity against PyTorch in ONNX Runtime; a failed check writes nothing.
    With --runtime litert, tflm or executorch, export a .tflite / .pte instead, checked the same way in that runtime.

    Parity is checked on real inputs from DATA: maximum absolute error and
    minimum cosine between PyTorch and ONNX Runtime outputs. The file is written
    to a temporary name and renamed only when the check passes.

    \b
    Examples:
      slimkit export zoo:mnist1d-cnn --out mnist1d.onnx
      slimkit export model.pt2 --data npz:data.npz --out model.onnx
      slimkit export zoo:digits-cnn --runtime litert --int8 --out digits_int8.tflite
      slimkit export zoo:digits-cnn --runtime tflm --out model.tflite     (+ model_data.cc/.h)
      slimkit export zoo:digits-cnn --runtime executorch --int8 --out digits_int8.pte
    """
    from .core.io import check_output_file
    from .export.onnx import export_onnx
    from .load import resolve

    out = check_output_file(out, inputs=_spec_paths(model, data), force=force)  # before any work
    if runtime.strip() == "ort" and precision not in (None, "fp32"):
        raise ConfigError(f"--precision {precision}: the ONNX export is fp32; slimkit's int8 ONNX comes from "
                          "`slimkit compress --recipe int8-static` (or int8-dynamic, int4-weights)")
    if runtime.strip() != "ort":
        return _export_runtime(model, data, out, runtime, int8, batch, force, as_json, trust_pickle, precision)
    _start(out.parent)
    lm, bundle = resolve(model, data, trust_pickle=trust_pickle)
    if lm.model is None:
        raise SlimkitError("export needs a PyTorch model, not an ONNX file")
    p = export_onnx(lm.model, bundle, out, opset=opset)
    if as_json:
        typer.echo(json.dumps({"out": str(out), "size_bytes": out.stat().st_size, "opset": opset,
                               "parity": jsonable(p.to_dict())}, indent=2))
        return
    typer.echo(f"wrote {out} ({out.stat().st_size:,} bytes); parity on {p.samples} samples: max abs err "
               f"{p.max_abs_err:.3g}, min cosine {p.cosine:.6f}")


def _export_runtime(model, data, out: Path, runtime: str, int8: bool, batch: int, force: bool, as_json: bool,
                    trust_pickle: bool, precision: Optional[str] = None) -> None:
    import numpy as np
    import torch

    from .core.context import eval_mode
    from .core.errors import ExportError
    from .core.io import atomic_write_bytes, atomic_write_text, check_output_file, scratch
    from .load import resolve
    from .runtimes import parse_runtimes
    from .runtimes import tflm as tflm_mod
    from .runtimes.base import check_int8

    rts = parse_runtimes(runtime)
    if len(rts) != 1:
        raise ConfigError("export writes one file: give one --runtime")
    rt = rts[0]
    if out.suffix != rt.suffix:
        raise ConfigError(f"--out {out}: a {rt.name} artifact is a {rt.suffix} file")
    precision = precision or ("int8" if (int8 or rt.name == "tflm") else "fp32")
    rt.check_precision(precision)
    extra = [out.with_name(out.stem + "_data.cc"), out.with_name(out.stem + "_data.h")] if rt.name == "tflm" else []
    for e in extra:
        check_output_file(e, inputs=_spec_paths(model, data), force=force)
    _start(out.parent)
    lm, bundle = resolve(model, data, trust_pickle=trust_pickle)
    if lm.model is None:
        raise SlimkitError("export needs a PyTorch model, not an ONNX file")
    with scratch() as d:
        art = rt.export(lm.model, bundle, Path(d) / f"m{rt.suffix}", precision, batch=batch)
        sess = rt.open(art, 1)
        result = {"out": str(out), "runtime": rt.name, "precision": precision, "batch": batch,
                  "size_bytes": art.path.stat().st_size, "ops": rt.ops(art)}
        if precision == "fp32":
            split = bundle.test.slice(0, min(64 // batch * batch or batch, len(bundle.test)))
            with eval_mode(lm.model), torch.no_grad():
                ref = lm.model(*split.inputs).float().numpy()
            got = np.concatenate([sess.run(x) for x, _ in split.batches(batch)])[: len(ref)]
            err = float(np.max(np.abs(got - ref)))
            result["parity_max_abs_err"] = err
            if err > 1e-3 * max(1.0, float(np.max(np.abs(ref)))):
                raise ExportError(f"{rt.name} output disagrees with PyTorch (max abs err {err:.3g}); nothing written")
        else:  # top-1 agreement (classification) or cosine (embeddings) with the float model, or one error line
            result.update(check_int8(sess, lm.model, bundle, f"{rt.name} {precision}", precision))
        if rt.name == "tflm":
            result["arena_bytes"] = tflm_mod.min_arena(art.path, sess.quantize_input(bundle.test.inputs[0][:1]))
        blob = art.path.read_bytes()
    atomic_write_bytes(out, blob)
    if rt.name == "tflm":
        h, cc = tflm_mod.c_array(blob, result["arena_bytes"])
        atomic_write_text(extra[0], cc)
        atomic_write_text(extra[1], h)
        result["firmware"] = [str(e) for e in extra]
    if as_json:
        typer.echo(json.dumps(jsonable(result), indent=2))
        return
    check = (f"max abs err {result['parity_max_abs_err']:.3g}" if "parity_max_abs_err" in result
             else f"cosine {result['cosine']:.4f}" if "cosine" in result
             else f"top-1 agreement {result.get('top1_agreement', float('nan')):.1%}")
    typer.echo(f"wrote {out} ({result['size_bytes']:,} bytes, {rt.name} {precision}, batch {batch}); parity: {check}"
               + (f"; arena {result['arena_bytes']:,} bytes; wrote {extra[0].name}, {extra[1].name}"
                  if rt.name == "tflm" else ""))


@app.command()
@_guard
def compress(model: str = typer.Argument(..., help="MODEL spec."),
             recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe YAML file, or a built-in recipe name (slimkit list)."),
             out: str = typer.Option(..., "--out", "-o", help="Output folder: model.onnx, report.json, report.md, "
                                                              "report.html, recipe.yaml. A new or empty folder, or an "
                                                              "earlier slimkit output (replaced whole)."),
             data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
             threads: int = typer.Option(1, "--threads", help=THREADS_HELP),
             batch: Optional[int] = typer.Option(None, "--batch", help=BATCH_HELP),
             runs: int = typer.Option(30, "--runs", min=20, help="Timed runs at batch 1."),
             seed: Optional[int] = typer.Option(None, "--seed", help="Override the recipe's seed."),
             trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow unpickling a full-model .pt file."),
             checkpoint_dir: Optional[Path] = typer.Option(
                 None, "--checkpoint-dir", help="Write a checkpoint after every training epoch here; run the same "
                                                "command again to resume an interrupted run."),
             runtime: str = typer.Option("ort", "--runtime", help="Also export to and measure in: litert, "
                                                                  "litert-builtin, tflm, executorch (comma-separated; ONNX Runtime "
                                                                  "always)."),
             board: Optional[str] = typer.Option(None, "--board", help="For tflm: cortex-m4, cortex-m7, esp32-s3 or "
                                                                       "ram=256KB,flash=1MB."),
             precision: Optional[str] = typer.Option(None, "--precision", help="With --runtime litert and a float "
                                                     "recipe: weight formats to write and measure beside fp32 and "
                                                     "int8 (comma-separated: int8-dynamic, int8-weights, fp16), e.g. "
                                                     "model_fp16.tflite."),
             dry_run: bool = typer.Option(False, "--dry-run", help="Check the recipe, the output folder and the "
                                                                   "options, print the resolved stages, run nothing."),
             as_json: bool = typer.Option(False, "--json", help="Print report.json's content instead of the summary."),
             open_page: bool = typer.Option(False, "--open", help="Open report.html in the browser when done.")) -> None:
    """Run a recipe (ordered stages of techniques with optional recovery), then measure baseline and result side by
    side, export the result to ONNX with a parity check, and write the report. All artifacts or none.

    Every technique's needs (calibration data, training data, teacher) are
    checked before any work starts. Output: OUT/model.onnx, OUT/baseline.onnx,
    OUT/report.json, OUT/report.md, OUT/report.html, OUT/recipe.yaml.

    \b
    Examples:
      slimkit compress zoo:digits-cnn --recipe demo --out out/
      slimkit compress zoo:minilm --recipe recipes/int8-dynamic.yaml --out out/minilm
      slimkit compress zoo:digits-cnn --recipe distill-student --out out/s --checkpoint-dir ckpt/
    """
    from .core.io import check_output_dir
    from .load import resolve
    from .pipeline.recipe import Recipe
    from .pipeline.runner import check_checkpoint_dir
    from .pipeline.runner import compress as run

    # everything that can be checked is checked before anything heavy is loaded or trained
    rec = Recipe.load(recipe)
    inputs = _spec_paths(model, data, recipe)
    out_dir = check_output_dir(out, inputs=inputs)
    check_checkpoint_dir(checkpoint_dir)
    _options(threads, batch, runs)
    from .pipeline.runner import check_runtime_recipe

    rts = check_runtime_recipe(rec, _runtimes_arg(runtime), precision)
    brd = _board_arg(board)
    if dry_run:
        _print_recipe(rec, as_json)
        if not as_json:
            typer.echo(f"output: {out_dir} ({'replaced whole' if out_dir.exists() else 'created'}); nothing was run")
        return
    _start(out_dir.parent)
    lm, bundle = resolve(model, data, trust_pickle=trust_pickle)
    if lm.model is None:
        raise SlimkitError("compress needs a PyTorch model, not an ONNX file")
    res = run(lm.model, rec, bundle, out=out_dir, model_spec=model, threads=threads, batch=batch, runs=runs, seed=seed,
              checkpoint_dir=checkpoint_dir, inputs=inputs, command=_command_line(), runtimes=rts, board=brd,
              precisions=precision)
    _done(res.report, out_dir, as_json, open_page)


@app.command()
@_guard
def optimize(model: str = typer.Argument(..., help="MODEL spec."),
             out: str = typer.Option(..., "--out", "-o", help="Output folder: study.journal, trials.json, pareto.json, "
                                                              "best/ (a complete compress output), variants/. A new "
                                                              "folder, or this study's folder to continue it."),
             data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
             max_drop: float = typer.Option(0.5, "--max-drop", help="Points of the task metric the result may lose "
                                                                    "(accuracy in %, or cosine fidelity x 100)."),
             objective: str = typer.Option("latency_b1", "--objective", help="What to minimise, measured as a ratio "
                                                                          "to the original: latency_b1, latency_bN, "
                                                                          "size, energy, peak_mem."),
             budget: str = typer.Option("", "--budget", help="Hard limits, e.g. 'size<=0.2x,latency_b1<=0.5x,"
                                                             "ram<=256KB'."),
             runtime: str = typer.Option("ort", "--runtime", help="Where candidates are measured: ort, litert, "
                                                                  "litert-builtin, tflm."),
             trials: int = typer.Option(20, "--trials", help="Trials in the study (all workers together)."),
             time_limit: Optional[str] = typer.Option(None, "--time", help="Start no new trial after this long "
                                                                           "(e.g. 20m, 90s)."),
             seed: int = typer.Option(0, "--seed", help="Seed of the sampler, the splits and every candidate."),
             storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage: a journal file, or a "
                                                                           "database URL (sqlite:///s.db, "
                                                                           "postgresql://...) shared by workers. "
                                                                           "Default: OUT/study.journal."),
             workers: int = typer.Option(1, "--workers", help="Processes running trials of this study at once."),
             space: Optional[str] = typer.Option(None, "--space", help="Techniques to search (comma-separated), "
                                                                       "default: every technique that declares "
                                                                       "tunable fields."),
             sampler: str = typer.Option("tpe", "--sampler", help="tpe, nsga2 or random (the baseline to beat)."),
             variants: int = typer.Option(0, "--variants", help="Export K models along the front to OUT/variants "
                                                                "with manifest.json and the on-device selector."),
             val_from: str = typer.Option("auto", "--val-from", help="Where the validation split the choice is made "
                                                                     "on comes from: val (the data's own x_val/y_val "
                                                                     "or ROOT/val), train (carved from the training "
                                                                     "split, which the original was trained on), test "
                                                                     "(carved from the test split, figures stated on "
                                                                     "the rest); auto: val if given, else train."),
             noise_margin: float = typer.Option(2.0, "--noise-margin", help="Standard errors of the validation drop "
                                                                         "(paired with the original, sample by "
                                                                         "sample) added to it before it is held "
                                                                         "against --max-drop; 0: take the "
                                                                         "validation figure at face value."),
             val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Share of that split carved off "
                                                                                   "to decide on (0.05-0.5; default "
                                                                                   "0.2 of train, 0.5 of test)."),
             references: bool = typer.Option(True, "--references/--no-references",
                                             help="Measure the built-in recipes beside the search (reference points "
                                                  "of the front)."),
             threads: int = typer.Option(1, "--threads", help=THREADS_HELP),
             batch: Optional[int] = typer.Option(None, "--batch", help=BATCH_HELP),
             runs: int = typer.Option(30, "--runs", min=20, help="Timed runs at batch 1 per candidate."),
             board: Optional[str] = typer.Option(None, "--board", help="For tflm: cortex-m4, cortex-m7, esp32-s3 or "
                                                                       "ram=256KB,flash=1MB."),
             trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow unpickling a full-model .pt file."),
             worker: int = typer.Option(0, "--worker", hidden=True),
             as_json: bool = typer.Option(False, "--json", help="Print best/report.json's content instead of the "
                                                                "summary."),
             open_page: bool = typer.Option(False, "--open", help="Open best/report.html when done.")) -> None:
    """Search compressed versions of MODEL for the best one under a budget, measured in the target runtime.

    Candidates are recipes (prune -> factorize -> KD recovery -> quantize) drawn from every registered technique
    that declares tunable fields; each is built, exported and timed interleaved with the original. The choice is
    made on a validation split (--val-from), the front and the report state held-out test figures. The
    study is kept in OUT/study.journal: run the same command again to continue it (after a kill, at most the trial
    in flight is lost).

    \b
    Examples:
      slimkit optimize zoo:digits-cnn --out opt/ --trials 30 --objective latency_bN
      slimkit optimize zoo:digits-cnn --out opt/ --runtime litert --budget 'size<=0.2x'
      slimkit optimize zoo:digits-cnn --out opt/ --variants 3 --workers 2
    """
    from .core.errors import ConfigError
    from .load import resolve
    from .search.planner import _check_out, parse_budget
    from .search.space import SearchSpace

    inputs = _spec_paths(model, data)
    parse_budget(budget)
    seconds = _duration(time_limit)
    if not isinstance(workers, int) or not 1 <= workers <= max(1, 4 * (os.cpu_count() or 1)):
        raise ConfigError(f"--workers {workers} is outside 1..{4 * (os.cpu_count() or 1)}")
    if val_fraction is not None and not 0.05 <= val_fraction <= 0.5:
        raise ConfigError(f"--val-fraction {val_fraction} must be within 0.05..0.5")
    from .search.planner import VAL_SOURCES

    if val_from not in VAL_SOURCES:
        raise ConfigError(f"--val-from {val_from!r} is not one of {', '.join(VAL_SOURCES)}")
    _check_out(out, inputs)
    _options(threads, batch, runs)
    SearchSpace.from_registry(space, runtime=runtime)
    brd = _board_arg(board)
    _start(Path(out).parent)
    lm, bundle = resolve(model, data, trust_pickle=trust_pickle)
    if lm.model is None:
        raise SlimkitError("optimize needs a PyTorch model, not an ONNX file")
    helpers = []
    if workers > 1 and worker == 0:
        import subprocess

        argv = [a for a in sys.argv[1:]]
        for w in range(1, workers):
            helpers.append(subprocess.Popen([sys.executable, "-m", "slimkit.cli", *argv, "--worker", str(w), "-q"],
                                            stdout=subprocess.DEVNULL))

    def wait_for():
        for h in helpers:
            h.wait()

    from .search.planner import optimize as run

    try:
        res = run(lm.model, bundle, out=out, max_drop=max_drop, objective=objective, budget=budget, runtime=runtime,
                  trials=trials, time_limit=seconds, seed=seed, storage=storage, space=space, sampler=sampler,
                  variants=variants, threads=threads, batch=batch, runs=runs, references=references,
                  val_fraction=val_fraction, val_from=val_from, noise_margin=noise_margin, model_spec=model,
                  command=_command_line(), inputs=inputs, board=brd, worker=worker, wait_for=wait_for)
    finally:
        for h in helpers:
            if h.poll() is None:
                h.terminate()
                h.wait()
    if worker:
        return
    _done(res.report, Path(out) / "best", as_json, open_page)
    if not as_json:
        r = res.report.get("ratios", {})
        faster = r.get("latency_ms_p50_b1", 1) < 0.9 or r.get("latency_ms_p50_bN", 1) < 0.9
        typer.echo(f"optimize: {len([t for t in res.trials if t['state'] == 'COMPLETE'])} trials measured; the chosen "
                   f"model is {r.get('size_bytes', 1):.2f}x the size and {r.get('latency_ms_p50_b1', 1):.2f}x "
                   f"(batch 1) / {r.get('latency_ms_p50_bN', 1):.2f}x (batch N) the latency of the original in ONNX "
                   f"Runtime{'' if faster else ' (not faster)'}; front and trials in {out}")
        if runtime != "ort" and res.best:
            typer.echo(f"optimize: in {runtime} the chosen model ({res.best['name']}) runs at "
                       + ", ".join(f"{k} {v:.2f}x" for k, v in res.best["ratios"].items() if k.startswith("latency"))
                       + " the ONNX Runtime fp32 original (measured in the trial, interleaved)")


def _duration(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    import re

    from .core.errors import ConfigError

    m = re.fullmatch(r"\s*([0-9.]+)\s*(s|m|h|min)?\s*", text)
    if not m:
        raise ConfigError(f"--time {text!r}: give a duration such as 90s, 20m or 1h")
    v = float(m.group(1)) * {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    if v <= 0:
        raise ConfigError("--time must be positive")
    return v


def _runtimes_arg(spec: str) -> list:
    if spec.strip() in ("", "ort"):
        return []
    from .runtimes import parse_runtimes

    return parse_runtimes(spec)


def _board_arg(spec: Optional[str]):
    if not spec:
        return None
    from .runtimes.tflm import board

    return board(spec)


def _done(report: dict, out_dir: Path, as_json: bool, open_page: bool) -> None:
    if as_json:
        typer.echo(json.dumps(jsonable(report), indent=2))
    else:
        _summary(report, out_dir)
    if open_page:
        _open(out_dir / "report.html")


def _open(page: Path) -> None:
    import webbrowser

    if not webbrowser.open(page.resolve().as_uri()):
        info(f"slimkit: no browser to open; the page is {page}")


def _summary(report: dict, out: Path) -> None:
    from .report.writer import fmt, fmt_ratio

    b, c, r = report["baseline"], report["compressed"], report.get("ratios", {})
    key = report.get("metric", "accuracy")
    kind = "pct" if key == "accuracy" else "f4"
    typer.echo(f"{key}: {fmt(b.get(key), kind)} -> {fmt(c.get(key), kind)}; size {fmt(b['size_bytes'], 'bytes')} -> "
               f"{fmt(c['size_bytes'], 'bytes')} ({r.get('size_bytes', 1):.2f}x)"
               + (f", .slim {fmt(c['size_bytes_compressed'], 'bytes')} ({fmt_ratio(c['size_ratio_compressed_vs_fp32_onnx'])}"
                  " vs fp32 ONNX)" if c.get("size_ratio_compressed_vs_fp32_onnx") else "")
               + "; ORT latency b1 "
               f"{r.get('latency_ms_p50_b1', float('nan')):.2f}x, bN {r.get('latency_ms_p50_bN', float('nan')):.2f}x")
    for v in report.get("verdicts", []):
        typer.echo(f"  - {v}")
    files = sorted(f.name for f in Path(out).iterdir() if not f.name.startswith(".")) if Path(out).is_dir() else []
    typer.echo(f"wrote {out}/: " + ", ".join(files))


@app.command()
@_guard
def demo(out: str = typer.Option("slimkit-demo", "--out", "-o", help="Output folder (new, empty, or an earlier "
                                                                      "slimkit output, replaced whole)."),
         recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Run this recipe instead of the planner "
                                                                           "(e.g. demo: int8 static)."),
         trials: int = typer.Option(8, "--trials", help="Planner trials (the demo's budget)."),
         threads: int = typer.Option(1, "--threads", help=THREADS_HELP),
         as_json: bool = typer.Option(False, "--json", help="Print report.json's content instead of the summary."),
         open_page: bool = typer.Option(False, "--open", help="Open report.html in the browser when done.")) -> None:
    """The main job on the built-in default: zoo:digits-cnn (trained on first use) through the planner (a short
    `slimkit optimize` study: pruning, factorization, recovery and quantization candidates, each measured in ONNX
    Runtime against the original), ending with the chosen model in OUT/best/ and one line saying whether it is
    smaller and faster. With --recipe, that recipe runs instead (OUT/ is then a compress output).

    Needs nothing but this package: the digits data ship with scikit-learn and
    the model trains in well under a minute on 2 cores, then is cached.

    \b
    Examples:
      slimkit demo
      slimkit demo --out /tmp/demo --trials 12
      slimkit demo --recipe demo
    """
    from .core.io import check_output_dir, publish_dir, scratch_dir
    from .load import resolve
    from .pipeline.recipe import Recipe
    from .pipeline.runner import compress as run

    rec = Recipe.load(recipe) if recipe else None
    inputs = _spec_paths(recipe)
    out_dir = check_output_dir(out, inputs=inputs)
    _options(threads)
    if not 1 <= trials <= 1000:
        from .core.errors import ConfigError

        raise ConfigError(f"--trials {trials} is outside 1..1000")
    _start(out_dir.parent)
    lm, bundle = resolve("zoo:digits-cnn", None)
    if rec is not None:
        info(f"slimkit demo: zoo:digits-cnn on {bundle.description}; recipe {rec.name}: {rec.description}")
        res = run(lm.model, rec, bundle, out=out_dir, model_spec="zoo:digits-cnn", threads=threads, inputs=inputs,
                  command=_command_line())
        _done(res.report, out_dir, as_json, open_page)
        return
    from .search.planner import optimize as plan

    info(f"slimkit demo: zoo:digits-cnn on {bundle.description}; the planner, {trials} trials, objective: batch-1 "
         "latency in ONNX Runtime, at most 0.5 pt accuracy lost on the validation split")
    tmp = scratch_dir(out_dir.parent)
    try:
        # the demo's space: the techniques that make this model faster in ONNX Runtime on a CPU without VNNI.
        # Static int8, QAT and mixed precision run 1.0x-1.8x the fp32 latency at batch 1 here (docs/BENCHMARKS.md),
        # so with a few trials they would be drawn and lose; `slimkit optimize` searches the whole registry
        res = plan(lm.model, bundle, out=tmp / "study", trials=trials, objective="latency_b1", references=False,
                   threads=threads, model_spec="zoo:digits-cnn", command=_command_line(), space=DEMO_SPACE)
        publish_dir(tmp / "study", out_dir)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    _done(res.report, out_dir / "best", as_json, open_page)
    if not as_json:
        r = res.report["ratios"]
        b1, bn, size = r["latency_ms_p50_b1"], r["latency_ms_p50_bN"], r["size_bytes"]
        verdict = ("smaller and faster" if size < 1 and b1 < 0.9 and bn < 0.9 else
                   "smaller but NOT faster at both batch sizes" if size < 1 else "not smaller")
        typer.echo(f"demo: the chosen model ({res.best['name']}) is {verdict} than the original in ONNX Runtime: "
                   f"{size:.2f}x the file, {b1:.2f}x the batch-1 and {bn:.2f}x the batch-N latency, accuracy "
                   f"{100 * res.report['baseline']['accuracy']:.2f}% -> {100 * res.report['compressed']['accuracy']:.2f}% "
                   f"on the held-out test split")


#: what `slimkit demo` searches (see the comment where it is used)
DEMO_SPACE = ["prune.structured", "prune.widths", "factorize.lowrank", "factorize.dsconv", "quantize.int8_dynamic"]


@app.command()
@_guard
def report(path: Path = typer.Argument(..., help="A report.json, or the folder holding it."),
           force: bool = typer.Option(False, "--force", help="Replace STEM.md/.html files that slimkit did not write."),
           as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
           open_page: bool = typer.Option(False, "--open", help="Open the HTML page in the browser.")) -> None:
    """Re-render the Markdown and HTML report (and its plots) from a report.json. The JSON itself is only read:
    IN.json gives IN.md, IN.html and IN.png beside it.

    Useful after editing a report.json by hand, or to refresh the HTML of an
    older run with this version's plots.

    \b
    Examples:
      slimkit report slimkit-demo/
      slimkit report out/report.json
    """
    from .core.errors import LoadError
    from .core.io import check_output_file
    from .report.writer import check_report, report_outputs, write_reports

    p = path / "report.json" if path.is_dir() else path
    if not p.is_file():
        raise LoadError(f"no report at {p}; give a report.json or the folder that slimkit compress wrote")
    try:
        rep = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LoadError(f"{p} is not a text file; give the report.json that slimkit compress wrote") from None
    except json.JSONDecodeError as e:
        raise LoadError(f"{p} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except OSError as e:
        raise LoadError(f"cannot read {p}: {e.strerror}") from None
    check_report(rep, str(p))
    rep.pop("generator", None)
    for dest in report_outputs(p.parent, p.stem):  # before writing anything
        check_output_file(dest, inputs=[p], force=force, flag="report output")
    written = write_reports(rep, p.parent, stem=p.stem, with_json=False)
    if as_json:
        typer.echo(json.dumps({"source": str(p), "written": [str(w) for w in written]}, indent=2))
    else:
        typer.echo("wrote " + ", ".join(str(w) for w in written))
    if open_page:
        _open(written[-1])


@app.command("compare")
@_guard
def compare_cmd(dirs: List[Path] = typer.Argument(..., help="Two or more slimkit compress output folders (or their "
                                                           "report.json files)."),
                out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the comparison page here "
                                                                              "(HTML)."),
                as_json: bool = typer.Option(False, "--json", help="Print the leaderboard as JSON."),
                force: bool = typer.Option(False, "--force", help="Replace an --out file slimkit did not write."),
                open_page: bool = typer.Option(False, "--open", help="Open the page in the browser.")) -> None:
    """Compare several runs on one page: a sortable leaderboard (metric, size, latency per runtime, MACs, energy),
    size-vs-metric and latency-vs-metric scatters with the Pareto front marked, and the recipes side by side.

    Latency is compared as each run's same-process ratio against its own
    original (robust to machine load); sizes are exact bytes.

    \b
    Examples:
      slimkit compare out/int8 out/pruned out/lowrank --out compare.html
      slimkit compare out/* --json | jq '.rows[] | {name, accuracy, size_ratio}'
    """
    from .core.io import atomic_write_text, check_output_file
    from .report.leaderboard import load_runs, summary, to_html

    if len(dirs) < 2:
        raise ConfigError("compare needs two or more output folders; slimkit report re-renders one")
    runs = load_runs(dirs)
    if out is None and not as_json:
        raise ConfigError("say where the page goes (--out page.html) or ask for --json")
    if out is not None:
        out = check_output_file(out, inputs=[Path(r["path"]) / "report.json" for r in runs], force=force)
        atomic_write_text(out, to_html(runs))
    if as_json:
        typer.echo(json.dumps(jsonable(summary(runs)), indent=2))
    elif out is not None:
        s = summary(runs)
        typer.echo(f"wrote {out}: {len(runs)} runs; Pareto front (size vs {s['metric']}): "
                   + ", ".join(s["pareto_size"]) + "; (latency b1 vs " + s["metric"] + "): "
                   + ", ".join(s["pareto_latency_b1"]))
    if open_page and out is not None:
        _open(out)


@app.command()
@_guard
def unpack(src: Path = typer.Argument(..., help="An ONNX file whose 4-bit weights slimkit packed (INT4)."),
           dst: Path = typer.Argument(..., help="Where to write the int8 version."),
           force: bool = typer.Option(False, "--force", help="Replace an existing DST that slimkit did not write.")) -> None:
    """Turn packed 4-bit weights back into int8 initializers, for full-speed inference.

    Mixed-precision files keep their 4-bit layers packed two codes per byte;
    ONNX Runtime then re-expands them at every run. Unpacking once (at install
    or load time) removes that cost; the outputs are bit-identical.

    \b
    Examples:
      slimkit unpack out/model.onnx out/model-int8.onnx
    """
    import onnx

    from .core.errors import LoadError
    from .core.io import check_output_file
    from .export.onnx import write_onnx
    from .quantize.onnx_passes import unpack_low_bit_weights

    check_output_file(dst, inputs=[src], force=force, flag="DST")
    if not src.is_file():
        raise LoadError(f"ONNX file not found: {src}")
    try:
        m = onnx.load(str(src))
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001
        raise LoadError(f"{src} is not a readable ONNX file ({type(e).__name__}); re-export it") from None
    n = unpack_low_bit_weights(m)
    if n == 0:
        raise LoadError(f"{src} has no packed 4-bit weights to unpack; nothing written")
    write_onnx(dst, m)
    typer.echo(f"unpacked {n} weight tensor(s): wrote {dst} ({dst.stat().st_size:,} bytes, from {src.stat().st_size:,})")


def _command_line() -> str:
    import shlex

    return "slimkit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv and sys.argv[0] else ""


def run() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    sys.exit(app())
