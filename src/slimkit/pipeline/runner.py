"""The recipe runner: check every need first, run the stages in order on a
copy of the model (the user's model is never mutated), record metrics after
each stage, then measure baseline and result side by side, export, report."""
from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..core.context import Context, eval_mode, seed_everything
from ..core.errors import ConfigError, SlimkitError
from ..core.progress import info
from ..core.io import (GENERATED_TAG, atomic_write_text, check_output_dir, publish_dir, scratch_dir, sweep_stale,
                       write_output_marker)
from ..core.registry import get_technique
from ..core.result import dequantizes, finalized, is_simulated, lowers, own_export, own_metrics
from ..distill.trainer import recover
from ..evaluate.compare import Candidate, compare
from ..evaluate.energy import SOURCE as ENERGY_SOURCE
from ..evaluate.macs import count_macs, count_nonzero_params, count_params, macs_by_layer
from ..evaluate.metrics import task_metrics
from ..export.onnx import export_artifact, export_onnx
from ..core.data import DataBundle
from .recipe import Recipe

@dataclasses.dataclass
class Result:
    model: nn.Module
    report: dict
    out_dir: Optional[Path] = None

    @property
    def baseline(self) -> dict:
        return self.report["baseline"]

    @property
    def compressed(self) -> dict:
        return self.report["compressed"]


def check_needs(recipe: Recipe, ctx: Context) -> None:
    missing = []
    for where, needs in recipe.needs().items():
        for n in sorted(needs):
            if not ctx.has(n):
                missing.append(f"{where} needs {n.replace('_', ' ')}")
    if missing:
        raise ConfigError("recipe cannot run: " + "; ".join(missing))


@torch.no_grad()
def quick_metrics(model: nn.Module, data: DataBundle, ref: Optional[np.ndarray]) -> dict:
    model.eval()
    out = torch.cat([model(*x) for x, _ in data.test.batches(256)]).float().numpy()
    m = task_metrics(out, data, ref)
    m.update(params=count_params(model), params_nonzero=count_nonzero_params(model),
             macs=count_macs(model, data.example_inputs(1)))
    return m


def _check_args(model, recipe, data) -> Recipe:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"compress: model must be a torch.nn.Module, not {type(model).__name__} (load a MODEL spec "
                          "with slimkit.load.load_model)")
    if not isinstance(data, DataBundle):
        raise ConfigError(f"compress: data must be a DataBundle, not {type(data).__name__} (load a DATA spec with "
                          "slimkit.load.load_data)")
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, os.PathLike)):
        return Recipe.load(recipe)
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    raise ConfigError(f"compress: recipe must be a Recipe, a built-in recipe name, a YAML path or a dict, not "
                      f"{type(recipe).__name__}")


def check_runtime_recipe(recipe: Recipe, runtimes: Sequence, precisions=None) -> list:
    """The on-device runtimes a recipe's result can go to (before any work): slimkit's static int8, QAT and mixed
    precision lower to every runtime; int4 weight-only exports to ONNX only, dynamic int8 to ONNX and LiteRT (its
    dynamic-range int8 of slimkit's codes). ``precisions``
    (comma list or sequence): weight formats beyond fp32/int8 (LiteRT's int8-dynamic, int8-weights, fp16), which
    apply to a float result: a recipe that quantizes already chose its int8 form."""
    from ..runtimes.base import parse_precisions

    runtimes = [rt for rt in runtimes if rt.name != "ort"]
    techs = [get_technique(s.type) for st in recipe.stages for s in st.techniques]
    bad = [(t, [r.name for r in runtimes if not t.exports_to(r.name)]) for t in techs]
    bad = [(t, names) for t, names in bad if names]
    if bad:
        t, names = bad[0]
        where = f"ONNX Runtime{' and ' + ', '.join(t.lowers_to) if t.lowers_to else ''} only"
        raise ConfigError(f"recipe {recipe.name} uses {t.onnx_only} ({t.name}), which exports to {where}; "
                          f"for {', '.join(names)} use quantize.int8_static, quantize.qat or "
                          "quantize.mixed_precision, or a float recipe (each runtime's stock int8 is made from it)")
    if _precision_list(precisions) and not runtimes:
        raise ConfigError("--precision names formats of an on-device runtime; add --runtime litert (ONNX Runtime "
                          "gets model.onnx, and slimkit's int8 ONNX from a quantizing recipe)")
    parse_precisions(",".join(_precision_list(precisions)), runtimes)
    quant = next((t for t in techs if t.family == "quantize"), None)
    extra = weight_formats(precisions)
    if extra and quant is not None:
        raise ConfigError(f"--precision {extra[0]}: recipe {recipe.name} quantizes already ({quant.name}: slimkit's "
                          "int8 in every runtime); weight formats apply to a float recipe's result")
    return runtimes


def _precision_list(precisions) -> list[str]:
    """'fp16, int8-dynamic' or a sequence -> the names."""
    if isinstance(precisions, str):
        precisions = precisions.split(",")
    return [p.strip() for p in precisions or () if p.strip()]


def weight_formats(precisions) -> list[str]:
    """The asked precisions beyond fp32/int8 (each runtime's default pair): LiteRT's weight formats."""
    return [p for p in _precision_list(precisions) if p not in ("fp32", "int8")]


def check_checkpoint_dir(path) -> Optional[Path]:
    if path is None:
        return None
    p = Path(path)
    if str(path).strip() == "":
        raise ConfigError("--checkpoint-dir is empty; give a folder name")
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--checkpoint-dir {p} is a file; give a folder (it is created)")
    check_output_dir(p / "x", flag="--checkpoint-dir")  # a writable location (its files are ours to resume from)
    return p


def compress(model: nn.Module, recipe: Recipe | str | dict, data: DataBundle, *, out: Optional[str | os.PathLike] = None,
             model_spec: str = "", threads: int = 1, batch: Optional[int] = None, runs: int = 30,
             seed: Optional[int] = None, measure: bool = True,
             checkpoint_dir: Optional[str | os.PathLike] = None, inputs: Sequence = (),
             command: str = "", runtimes: Sequence = (), board=None, extra_report: Optional[dict] = None,
             precisions=None) -> Result:
    """Run ``recipe`` on a copy of ``model`` with ``data``; write DIR/model.onnx,
    report.json, report.md, report.html and recipe.yaml when ``out`` is given
    (all or nothing: files are assembled in a scratch folder and the folder is moved in whole, replacing an
    earlier slimkit output there; see :mod:`slimkit.core.io` for the output policy). ``inputs``: paths this run
    reads (never replaced). The caller's model keeps its train/eval mode, also when this fails. ``runtimes``:
    on-device runtimes (``slimkit.runtimes``) besides ONNX Runtime: the result is exported to each (model.tflite,
    model_int8.tflite, model_data.cc/.h for TFLM), measured side by side with the baseline there, and reported
    under ``runtimes``. ``extra_report``: keys merged into report.json before it is written (the planner's front).
    ``precisions``: LiteRT weight formats of a float result beside fp32 and int8 (int8-dynamic, int8-weights, fp16:
    model_fp16.tflite...), measured like the others."""
    recipe = _check_args(model, recipe, data)
    runtimes = check_runtime_recipe(recipe, runtimes, precisions)
    extra = weight_formats(precisions)
    out_dir = check_output_dir(out, inputs=inputs) if out is not None else None
    check_checkpoint_dir(checkpoint_dir)
    check_options(threads=threads, batch=batch, runs=runs)
    with eval_mode(model):
        return _compress(model, recipe, data, out_dir, model_spec=model_spec, threads=threads, batch=batch,
                         runs=runs, seed=seed, measure=measure, checkpoint_dir=checkpoint_dir, command=command,
                         runtimes=runtimes, board=board, extra_report=extra_report, extra_precisions=extra)


def artifact_name(precision: str, suffix: str) -> str:
    """model.tflite (fp32), model_int8.tflite, model_fp16.tflite, model_int8_dynamic.tflite..."""
    return f"model{suffix}" if precision == "fp32" else f"model_{precision.replace('-', '_')}{suffix}"


def _on_device(baseline, work, data, runtimes, tmp: Path, *, threads, batch, runs, board, extra=()) -> dict:
    """Export baseline and result to each on-device runtime, measure them side by side, keep the result's files."""
    from ..evaluate.runtimes import measure_runtimes
    from ..runtimes import get_runtime
    from ..runtimes import tflm as tflm_mod

    ort = get_runtime("ort")
    quantized = lowers(work)  # slimkit's int8: the same integer model in every runtime, beside the stock int8
    dynamic = not quantized and dequantizes(work)  # slimkit's dynamic int8: LiteRT's dynamic-range form of it
    plan = [("baseline", ort, "fp32")] + ([("compressed", ort, "int8")] if quantized else [])
    for rt in runtimes:
        for prec in (["int8"] if rt.name == "tflm" else ["fp32", "int8"]):
            plan.append(("baseline", rt, prec))
            if (prec == "int8" or not quantized) and not dynamic:
                plan.append(("compressed", rt, prec))
        if dynamic:
            plan.append(("compressed", rt, "int8-dynamic"))
        for prec in (p for p in extra if p in rt.precisions):  # weight formats of a float result
            plan += [("baseline", rt, prec), ("compressed", rt, prec)]
    res = measure_runtimes({"baseline": baseline, "compressed": work}, data, runtimes, workdir=tmp / "work" / "rt",
                           threads=threads, batch=batch, runs=runs, board=board, plan=plan)
    for lbl, m in res["rows"].items():
        if m["model"] != "compressed":
            continue
        if m["runtime"] in ("litert", "executorch"):
            suffix = Path(m["artifact"]).suffix
            shutil.copyfile(m["artifact"], tmp / artifact_name(m["precision"], suffix))
        if m["runtime"] == "tflm":
            from ..runtimes.base import Artifact

            tflm_mod.write_firmware(Artifact(Path(m["artifact"]), "tflm", "int8"), tmp, m["arena_bytes"])
    for m in res["rows"].values():
        m.pop("artifact", None)
    return res


def apply_recipe(baseline: nn.Module, recipe: Recipe, data: DataBundle, ctx: Context, *,
                 ref: Optional[np.ndarray] = None, checkpoint_dir=None) -> tuple[nn.Module, list[dict]]:
    """Run the recipe's stages in order on a copy of ``baseline``: each technique, then the stage's recovery, then
    the result's finalize; returns the result and one summary per stage (metrics on ``data.test``). The caller
    seeds and checks needs first (``compress`` does; so does the planner, for each candidate)."""
    work = copy.deepcopy(baseline)
    stages = []
    for stage in recipe.stages:
        t0 = time.perf_counter()
        notes_before = len(ctx.notes)
        ckpt = Path(checkpoint_dir) / f"{recipe.name}-{stage.name}" if checkpoint_dir else None
        ctx.stage = stage.name
        for i, step in enumerate(stage.techniques):
            tech = get_technique(step.type)
            # techniques that train (distill.*) resume from their own checkpoint
            ctx.checkpoint = str(ckpt) + f"-{i}.pt" if ckpt else None
            info(f"slimkit: stage {stage.name}: {step.type}")
            work = tech.apply(work, step.config, ctx)
            if not isinstance(work, nn.Module):
                raise SlimkitError(f"technique {step.type} returned {type(work).__name__}, not an nn.Module")
        if stage.finetune is not None and stage.finetune.epochs > 0:
            work = recover(work, ctx, stage.finetune, checkpoint=str(ckpt) + "-finetune.pt" if ckpt else None)
        work = finalized(work)  # e.g. make pruning masks permanent once recovery is done
        stages.append({"name": stage.name, "techniques": [s.type for s in stage.techniques],
                       "finetune": stage.finetune.to_dict() if stage.finetune else None,
                       "seconds": round(time.perf_counter() - t0, 2),
                       "metrics": quick_metrics(work, data, ref), "notes": ctx.notes[notes_before:]})
    return work, stages


def _compress(model, recipe, data, out_dir, *, model_spec, threads, batch, runs, seed, measure, checkpoint_dir,
              command, runtimes=(), board=None, extra_report=None, extra_precisions=()) -> Result:
    from ..report.writer import write_reports

    seed = recipe.seed if seed is None else seed
    baseline = model
    teacher = copy.deepcopy(baseline).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    ctx = Context(data=data, teacher=teacher, seed=seed)
    check_needs(recipe, ctx)  # before any work
    from ..core.checks import check_compatible

    check_compatible(model, data)
    if out_dir is not None:
        sweep_stale(out_dir.parent)

    seed_everything(seed)
    with torch.no_grad():
        ref = torch.cat([baseline(*x) for x, _ in data.test.batches(256)]).float().numpy()
    work, stages = apply_recipe(baseline, recipe, data, ctx, ref=ref, checkpoint_dir=checkpoint_dir)

    qinfo = getattr(work, "info", None)
    report: dict = {"model": model_spec or type(model).__name__, "data": data.name, "task": data.task,
                    "recipe": recipe.to_dict(), "stages": stages, "notes": list(ctx.notes),
                    "warnings": list(ctx.warnings), "energy_source": ENERGY_SOURCE}
    import datetime

    report["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if command:
        report["command"] = command
    if ctx.history:
        report["history"] = list(ctx.history)
    try:  # per-layer MACs before/after: the report's pruning / factorization plots (quantization keeps the MACs,
        # and torch's counter cannot see through the fake-quant wrappers)
        if is_simulated(work):
            raise NotImplementedError("a quantized simulation")
        report["layer_macs"] = {"baseline": macs_by_layer(baseline, data.example_inputs(1)),
                                "compressed": macs_by_layer(work, data.example_inputs(1))}
    except NotImplementedError:
        pass
    except Exception as e:  # noqa: BLE001 - a layer breakdown is a nicety; the totals are measured anyway
        ctx.note(f"per-layer MACs not available ({type(e).__name__})")
    if isinstance(qinfo, dict) and qinfo.get("sensitivity"):
        report["sensitivity"] = qinfo["sensitivity"]
    if ctx.tables:  # technique-specific tables (channels kept, skipped layers, ...)
        report["tables"] = ctx.tables
    tmp = scratch_dir(out_dir.parent if out_dir else None)
    try:
        export_artifact(work, data, tmp / "model.onnx")
        export_onnx(baseline, data, tmp / "baseline.onnx")
        if measure:
            cmp = compare([Candidate("baseline", baseline, tmp / "baseline.onnx"),
                           Candidate("compressed", work, tmp / "model.onnx", own_metrics(work))],
                          data, workdir=tmp / "work", threads=threads, batch=batch, runs=runs)
            report.update(baseline=cmp["metrics"]["baseline"], compressed=cmp["metrics"]["compressed"],
                          ratios=cmp["ratios"]["compressed"], verdicts=cmp["verdicts"]["compressed"],
                          metric=cmp["metric"], settings=cmp["settings"], environment=cmp["environment"])
            report["verdicts"] = report["verdicts"] + quality_verdicts(report, recipe.max_drop, ctx.warnings)
        if measure and own_export(work) is None:
            # float weights (pruned, fine-tuned): the .slim container is where zeros and shared values pay off
            from ..prune.container import save_slim

            c = save_slim(work, tmp / "model.slim")
            b = save_slim(baseline, tmp / "work" / "baseline.slim")
            report["compressed"]["size_bytes_compressed"] = c["file_bytes"]
            report["baseline"]["size_bytes_compressed"] = b["file_bytes"]
            report["ratios"]["size_bytes_compressed"] = c["file_bytes"] / b["file_bytes"]
            report["compressed"]["size_ratio_compressed_vs_fp32_onnx"] = c["file_bytes"] / report["baseline"]["size_bytes"]
        if runtimes and measure:
            rt = _on_device(baseline, work, data, runtimes, tmp, threads=threads, batch=batch, runs=runs, board=board,
                            extra=extra_precisions)
            report["runtimes"] = rt
            if any(m.get("board") for m in rt["rows"].values()):
                report["verdicts"] = list(report.get("verdicts", [])) + [
                    f"TFLM ({m['model']}): {m['board']['verdict']}" for m in rt["rows"].values() if m.get("board")]
        shutil.rmtree(tmp / "work", ignore_errors=True)
        atomic_write_text(tmp / "recipe.yaml", f"# {GENERATED_TAG}: the resolved recipe\n" + recipe.to_yaml())
        report["artifacts"] = {"model.onnx": "the compressed model, ONNX", "baseline.onnx": "the original model, ONNX",
                               "report.json": "all metrics", "report.md": "summary tables",
                               "report.html": "summary with plots", "recipe.yaml": "the resolved recipe",
                               "model.slim": "float weights in the .slim container (pruned/clustered models; "
                                             "load with slimkit.prune.load_slim)",
                               "model.tflite": "the compressed model for LiteRT, fp32 (with --runtime litert)",
                               "model_int8.tflite": "the compressed model for LiteRT, fully int8 (PT2E)",
                               "model_fp16.tflite": "float16 weights for LiteRT (--precision fp16)",
                               "model_int8_dynamic.tflite": "int8 weights, int8 activations quantized at run time "
                                                            "(--precision int8-dynamic)",
                               "model_int8_weights.tflite": "int8 weights dequantized to float (--precision "
                                                            "int8-weights)",
                               "model.pte": "the compressed model for ExecuTorch (XNNPACK), fp32",
                               "model_int8.pte": "the compressed model for ExecuTorch, int8",
                               "model_data.cc": "the int8 model as a C array for TFLM firmware, with model_data.h "
                                                "(kTensorArenaSize: the measured arena)"}
        report.update(extra_report or {})
        if measure:
            write_reports(report, tmp)
        if out_dir is not None:
            write_output_marker(tmp, {"model": report["model"], "recipe": recipe.name, "command": command,
                                      "files": sorted(f.name for f in tmp.iterdir())})
            publish_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Result(work, report, out_dir)


def quality_verdicts(report: dict, max_drop: float, warnings: list) -> list[str]:
    """Verdicts beyond speed and size: a task-metric drop larger than the recipe accepts, and every technique that
    did only part of what it was asked (its warning)."""
    out = []
    key = "accuracy" if "accuracy" in report.get("baseline", {}) else "fidelity_cos_mean"
    b, c = report.get("baseline", {}).get(key), report.get("compressed", {}).get(key)
    if b is not None and c is not None:
        name = "accuracy" if key == "accuracy" else "cosine fidelity"
        drop = b - c
        if drop > max_drop:
            out.append(f"{name}: {b:.4f} -> {c:.4f} (drop {drop:.4f}): MORE than this recipe's acceptable drop of "
                       f"{max_drop:g} (max_drop)")
        else:
            out.append(f"{name}: {b:.4f} -> {c:.4f} (drop {drop:.4f}): within this recipe's acceptable {max_drop:g}")
    out += [f"partial: {w}" for w in warnings]
    return out


def check_options(*, threads: int = 1, batch: Optional[int] = None, runs: int = 30) -> None:
    """The measurement options, checked before any work (the CLI and the API share these bounds)."""
    limit = max(64, 4 * (os.cpu_count() or 1))
    for name, v, lo, hi in (("threads", threads, 1, limit), ("runs", runs, 20, 100_000),
                            ("batch", batch, 1, 1_000_000)):
        if v is None and name == "batch":
            continue
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ConfigError(f"--{name} {v!r} is outside {lo}..{hi}")
