"""The recipe runner: check every need first, run the stages in order on a
copy of the model (the user's model is never mutated), record metrics after
each stage, then measure baseline and result side by side, export, report."""
from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from ..core.context import Context, seed_everything
from ..core.errors import ConfigError, SlimkitError
from ..core.progress import info
from ..core.registry import get_technique
from ..evaluate.compare import Candidate, compare
from ..evaluate.energy import SOURCE as ENERGY_SOURCE
from ..evaluate.macs import count_macs, count_nonzero_params, count_params
from ..evaluate.metrics import task_metrics
from ..export.onnx import export_onnx
from ..zoo.data import DataBundle
from .recipe import Recipe

ARTIFACTS = ("model.onnx", "report.json", "report.md", "recipe.yaml")


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


def export_artifact(model: nn.Module, data: DataBundle, path: Path):
    """Models that need a special ONNX form (e.g. int8 QDQ) carry ``slimkit_export``."""
    finalize = getattr(model, "slimkit_finalize", None)
    if callable(finalize):
        model = finalize()
    fn = getattr(model, "slimkit_export", None)
    if callable(fn):
        return fn(data, path)
    return export_onnx(model, data, path)


def compress(model: nn.Module, recipe: Recipe | str | dict, data: DataBundle, *, out: Optional[str | os.PathLike] = None,
             model_spec: str = "", threads: int = 1, batch: Optional[int] = None, runs: int = 30,
             seed: Optional[int] = None, measure: bool = True,
             checkpoint_dir: Optional[str | os.PathLike] = None) -> Result:
    """Run ``recipe`` on a copy of ``model`` with ``data``; write DIR/model.onnx,
    report.json, report.md, report.html and recipe.yaml when ``out`` is given
    (all or nothing: files are assembled in a temporary folder first)."""
    from ..report.writer import write_reports

    if isinstance(recipe, str):
        recipe = Recipe.load(recipe)
    elif isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe)
    seed = recipe.seed if seed is None else seed
    baseline = model.eval()
    teacher = copy.deepcopy(baseline).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    ctx = Context(data=data, teacher=teacher, seed=seed)
    check_needs(recipe, ctx)  # before any work
    from ..load import check_compatible

    check_compatible(model, data)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder")

    seed_everything(seed)
    with torch.no_grad():
        ref = torch.cat([baseline(*x) for x, _ in data.test.batches(256)]).float().numpy()
    work = copy.deepcopy(baseline)
    stages = []
    for stage in recipe.stages:
        t0 = time.perf_counter()
        notes_before = len(ctx.notes)
        ckpt = Path(checkpoint_dir) / f"{recipe.name}-{stage.name}" if checkpoint_dir else None
        for i, step in enumerate(stage.techniques):
            tech = get_technique(step.type)
            # techniques that train (distill.*) resume from their own checkpoint
            ctx.extras["checkpoint"] = str(ckpt) + f"-{i}.pt" if ckpt else None
            info(f"slimkit: stage {stage.name}: {step.type}")
            work = tech.apply(work, step.config, ctx)
            if not isinstance(work, nn.Module):
                raise SlimkitError(f"technique {step.type} returned {type(work).__name__}, not an nn.Module")
        if stage.finetune is not None and stage.finetune.epochs > 0:
            from ..distill.trainer import recover

            work = recover(work, ctx, stage.finetune, checkpoint=str(ckpt) + "-finetune.pt" if ckpt else None)
        finalize = getattr(work, "slimkit_finalize", None)
        if callable(finalize):  # e.g. make pruning masks permanent once recovery is done
            work = finalize()
        stages.append({"name": stage.name, "techniques": [s.type for s in stage.techniques],
                       "finetune": stage.finetune.to_dict() if stage.finetune else None,
                       "seconds": round(time.perf_counter() - t0, 2),
                       "metrics": quick_metrics(work, data, ref), "notes": ctx.notes[notes_before:]})

    qinfo = getattr(work, "info", None)
    report: dict = {"model": model_spec or type(model).__name__, "data": data.name, "task": data.task,
                    "recipe": recipe.to_dict(), "stages": stages, "notes": list(ctx.notes),
                    "energy_source": ENERGY_SOURCE}
    if isinstance(qinfo, dict) and qinfo.get("sensitivity"):
        report["sensitivity"] = qinfo["sensitivity"]
    if ctx.extras.get("tables"):  # technique-specific tables (channels kept, skipped layers, ...)
        report["tables"] = ctx.extras["tables"]
    tmp = Path(tempfile.mkdtemp(prefix=".slimkit-", dir=str(out_dir.parent) if out_dir else None))
    try:
        export_artifact(work, data, tmp / "model.onnx")
        export_onnx(baseline, data, tmp / "baseline.onnx")
        if measure:
            cmp = compare([Candidate("baseline", baseline, tmp / "baseline.onnx"),
                           Candidate("compressed", work, tmp / "model.onnx", getattr(work, "slimkit_metrics", {}))],
                          data, workdir=tmp / "work", threads=threads, batch=batch, runs=runs)
            report.update(baseline=cmp["metrics"]["baseline"], compressed=cmp["metrics"]["compressed"],
                          ratios=cmp["ratios"]["compressed"], verdicts=cmp["verdicts"]["compressed"],
                          metric=cmp["metric"], settings=cmp["settings"], environment=cmp["environment"])
        if measure and not callable(getattr(work, "slimkit_export", None)):
            # float weights (pruned, fine-tuned): the .slim container is where zeros and shared values pay off
            from ..prune.container import save_slim

            c = save_slim(work, tmp / "model.slim")
            b = save_slim(baseline, tmp / "work" / "baseline.slim")
            report["compressed"]["size_bytes_compressed"] = c["file_bytes"]
            report["baseline"]["size_bytes_compressed"] = b["file_bytes"]
            report["ratios"]["size_bytes_compressed"] = c["file_bytes"] / b["file_bytes"]
            report["compressed"]["size_ratio_compressed_vs_fp32_onnx"] = c["file_bytes"] / report["baseline"]["size_bytes"]
        shutil.rmtree(tmp / "work", ignore_errors=True)
        (tmp / "recipe.yaml").write_text(recipe.to_yaml())
        report["artifacts"] = {"model.onnx": "the compressed model, ONNX", "baseline.onnx": "the original model, ONNX",
                               "report.json": "all metrics", "report.md": "summary tables",
                               "report.html": "summary with plots", "recipe.yaml": "the resolved recipe",
                               "model.slim": "float weights in the .slim container (pruned/clustered models; "
                                             "load with slimkit.prune.load_slim)"}
        if measure:
            write_reports(report, tmp)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            for f in sorted(tmp.iterdir()):
                os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Result(work, report, out_dir)
