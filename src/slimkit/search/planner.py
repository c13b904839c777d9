"""``slimkit optimize``: a model, data and a budget in; the best compressed model for the target runtime out.

The planner searches recipes (the space comes from the technique registry, :mod:`slimkit.search.space`) with an
Optuna multi-objective study: maximise the task metric, minimise the objective (a measured ratio to the original),
with the allowed drop and the hard limits as constraints. Every candidate is built, exported to the target runtime
and measured (:mod:`slimkit.search.measure`); the choice rests on a validation split carved from the training data,
the front and the report state held-out test figures. The study lives in Optuna storage (a journal file in the
output folder by default), so a killed run continues where it stopped and several workers can share one study.

Output folder::

    DIR/study.journal     the Optuna study (or --storage URL)
    DIR/trials.json       every trial: recipe, measured figures (val and test), state, reason
    DIR/pareto.json       the measured front, the built-in recipes as references, the choice
    DIR/best/             a complete `slimkit compress` output of the chosen recipe (recipe.yaml replays it)
    DIR/variants/         with --variants K: K models along the front, manifest.json and selector.py
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..core.context import Context, eval_mode, seed_everything
from ..core.errors import ConfigError, OutputError, SlimkitError, first_line
from ..core.io import (atomic_write_text, check_output_dir, is_slimkit_folder, publish_dir, scratch_dir,
                       sweep_stale, write_output_marker)
from ..core.progress import headline, info, muted
from ..evaluate.memory import peak_memory
from ..pipeline.recipe import Recipe
from ..pipeline.runner import apply_recipe, check_needs, compress
from ..core.data import DataBundle
from .measure import OBJECTIVES, Meter
from .space import SearchSpace

#: the built-in recipes measured beside the search as reference points (those that apply to the model)
REFERENCE_RECIPES = ("prune-structured-50", "lowrank-auto", "dsconv", "int8-static", "int8-dynamic")
SAMPLERS = ("tpe", "nsga2", "random")
STUDY = "slimkit"


class Unpromising(SlimkitError):
    """Raised inside a candidate's recovery to stop it early (the trial is recorded as pruned)."""


# ----------------------------------------------------------------------------------------------- budget

@dataclasses.dataclass(frozen=True)
class Limit:
    """One hard limit: ``size<=0.2x`` (a ratio to the original) or ``ram<=256KB`` / ``latency_b1<=2ms``."""

    key: str
    value: float
    relative: bool
    text: str

    def measured(self, m: dict) -> Optional[float]:
        if self.relative:
            return m.get("ratios", {}).get(self.key)
        field = {"ram": "arena_bytes" if m.get("runtime") == "tflm" else "peak_mem_bytes", "flash": "size_bytes",
                 "size": "size_bytes", "peak_mem": "peak_mem_bytes", "energy": "energy_mj_est"}.get(self.key)
        if self.key.startswith("latency"):
            field = OBJECTIVES[self.key]
        return m.get(field)

    def violation(self, m: dict) -> float:
        """<= 0: met; > 0: by how much (relative to the limit) it is missed; inf: not measured."""
        v = self.measured(m)
        if not isinstance(v, (int, float)):
            return math.inf
        return v / self.value - 1.0


_UNITS = {"b": 1, "kb": 1024, "kib": 1024, "mb": 1024 ** 2, "mib": 1024 ** 2, "gb": 1024 ** 3, "ms": 1.0, "s": 1e3,
          "mj": 1.0}
LIMIT_KEYS = ("size", "latency_b1", "latency_bN", "energy", "peak_mem", "ram", "flash")


def parse_budget(text: str) -> list[Limit]:
    out = []
    for part in [p.strip() for p in (text or "").split(",") if p.strip()]:
        m = re.fullmatch(r"([A-Za-z_0-9]+)\s*<=\s*([0-9.eE+-]+)\s*([A-Za-z]*)", part)
        if not m:
            raise ConfigError(f"--budget {part!r}: write KEY<=VALUE, e.g. size<=0.2x, latency_b1<=0.5x, ram<=256KB")
        key, num, unit = m.group(1), m.group(2), m.group(3).lower()
        if key not in LIMIT_KEYS:
            from ..core.errors import did_you_mean

            raise ConfigError(f"--budget {part!r}: unknown key {key!r}{did_you_mean(key, LIMIT_KEYS)}; known: "
                              f"{', '.join(LIMIT_KEYS)}")
        try:
            value = float(num)
        except ValueError:
            raise ConfigError(f"--budget {part!r}: {num!r} is not a number") from None
        if not value > 0 or not math.isfinite(value):
            raise ConfigError(f"--budget {part!r}: the limit must be a positive number")
        if unit == "x":
            if key in ("ram", "flash"):
                raise ConfigError(f"--budget {part!r}: {key} is an absolute size (e.g. {key}<=256KB)")
            out.append(Limit(key, value, True, part))
            continue
        if unit not in _UNITS or (key.startswith("latency") != (unit in ("ms", "s"))) or \
                (key == "energy" and unit != "mj") or (key not in ("energy",) and unit == "mj"):
            want = "ms or s" if key.startswith("latency") else "mJ" if key == "energy" else "B, KB or MB"
            raise ConfigError(f"--budget {part!r}: give a ratio like 0.5x or an absolute value in {want}")
        out.append(Limit(key, value * _UNITS[unit], False, part))
    return out


# ----------------------------------------------------------------------------------------------- data splits

VAL_SOURCES = ("auto", "val", "train", "test")


def val_source(data: DataBundle, source: str) -> str:
    """The validation source ``--val-from`` resolves to for ``data`` (``auto``: ``val`` when the data has one, else
    ``train``), or one line saying why it cannot be used."""
    if source not in VAL_SOURCES:
        raise ConfigError(f"--val-from {source!r} is not one of {', '.join(VAL_SOURCES)}")
    if source == "auto":
        return "val" if data.val is not None else "train"
    if source == "val" and data.val is None:
        raise ConfigError(f"--val-from val: {data.name} has no validation split (npz: save x_val/y_val; image "
                          "folder: ROOT/val/<class>); or use --val-from train|test")
    return source


def carve_validation(data: DataBundle, fraction: Optional[float], seed: int,
                     source: str = "auto") -> tuple[DataBundle, DataBundle, dict]:
    """(search, report, about): the search bundle trains candidates and scores them on the validation split (the
    decision); the report bundle trains on the same rows and scores on a disjoint held-out split (stated only).

    ``source``: ``val`` (the bundle's own validation split, which the user's model was not trained on), ``train`` (a
    seeded ``fraction`` of the training split, default 0.2: the original was usually trained on those rows, so its
    validation figure is optimistic and saturates on easy data), ``test`` (a seeded ``fraction`` of the test split,
    default 0.5, reported on the rest: both halves are unseen by the original and by every candidate), ``auto``
    (``val`` when the bundle has one, else ``train``). ``about`` says which, for the report."""
    source = val_source(data, source)
    if data.train is None or len(data.train) < 10:
        raise ConfigError(f"optimize needs training data to recover candidates on (and to carve a validation split "
                          f"from); {data.name} has {0 if data.train is None else len(data.train)} training samples")
    g = torch.Generator().manual_seed(10_007 + seed)
    train, test = data.train, data.test
    if source == "val":
        val = data.val
        note = "the data's own validation split"
    else:
        frac = fraction if fraction is not None else (0.5 if source == "test" else 0.2)
        pool = data.train if source == "train" else data.test
        if len(pool) < 10:
            raise ConfigError(f"--val-from {source}: the {source} split of {data.name} has only {len(pool)} samples")
        k = max(1, int(round(len(pool) * frac)))
        perm = torch.randperm(len(pool), generator=g)
        val, rest = pool.take(perm[:k]), pool.take(perm[k:])
        if source == "train":
            train = rest
            note = (f"{k} samples carved from the training split, which the original was trained on: its validation "
                    "figure is optimistic (give a validation split, or --val-from test)")
        else:
            test = rest
            note = f"{k} samples carved from the test split; the figures stated come from the other {len(rest)}"
    m = min(len(train), 256)
    calib = train.take(torch.randperm(len(train), generator=g)[:m])
    common = dict(input_names=data.input_names, dynamic_axes=data.dynamic_axes, num_classes=data.num_classes,
                  augment=data.augment)
    search = DataBundle(data.name, data.task, train, val, calib=calib,
                        description=f"{data.name}: validation split ({len(val)} samples, {source})", **common)
    report = DataBundle(data.name, data.task, train, test, calib=calib, description=data.description, **common)
    return search, report, {"source": source, "samples": len(val), "test_samples": len(test), "note": note}


def fingerprint_model(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        flat = v.detach().flatten()
        h.update(flat[: 4096].float().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint_data(data: DataBundle) -> str:
    h = hashlib.sha256(f"{data.name}:{len(data.train or [])}:{len(data.test)}".encode())
    for t in data.test.inputs:
        h.update(t[:64].float().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- storage

def open_storage(storage: Optional[str], out_dir: Path):
    import optuna

    if storage is None or storage.endswith((".journal", ".log")) or "://" not in storage:
        path = out_dir / "study.journal" if storage is None else Path(storage)
        if path.exists() and path.is_dir():
            raise ConfigError(f"--storage {path} is a folder; give a journal file path or a database URL")
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path))), str(path)
    try:
        return optuna.storages.RDBStorage(storage, engine_kwargs={"pool_pre_ping": True}), storage
    except Exception as e:  # noqa: BLE001 - sqlalchemy/driver errors: one line naming the URL
        raise ConfigError(f"--storage {storage}: cannot open the database ({type(e).__name__}: {first_line(e, 120)}); "
                          "check the URL, the server and its driver (e.g. pip install psycopg2-binary)") from None


def _sampler(name: str, seed: int, trials: int):
    """The constraints (allowed drop, hard limits) reach the samplers through ``trial.set_constraint``."""
    import warnings

    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, trials // 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # group=True: conditional slots
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          n_startup_trials=max(3, min(8, trials // 3)))


# ----------------------------------------------------------------------------------------------- the result

@dataclasses.dataclass
class OptimizeResult:
    out_dir: Optional[Path]
    best: Optional[dict]
    front: list[dict]
    trials: list[dict]
    references: list[dict]
    model: Optional[nn.Module] = None
    report: Optional[dict] = None


def optimize(model: nn.Module, data: DataBundle, *, out: str | os.PathLike, max_drop: float = 0.5,
             objective: str = "latency_b1", budget: str = "", runtime: str = "ort", trials: int = 20,
             time_limit: Optional[float] = None, seed: int = 0, storage: Optional[str] = None, space: Any = None,
             sampler: str = "tpe", variants: int = 0, threads: int = 1, batch: Optional[int] = None, runs: int = 30,
             references: bool = True, val_fraction: Optional[float] = None, val_from: str = "auto",
             noise_margin: float = 2.0, model_spec: str = "", command: str = "",
             inputs: Sequence = (), board=None, worker: int = 0, finish: bool = True,
             wait_for=None) -> OptimizeResult:
    """Search compressed versions of ``model`` under the budget and write the result to ``out`` (see the module
    docstring). ``max_drop``: points of the task metric (accuracy in percent, or cosine fidelity x 100) the choice
    may lose on the validation split, counted with ``noise_margin`` standard errors of that drop on top (paired with
    the original on the same samples: 0 takes the validation figure at face value); ``objective``: latency_b1 |
    latency_bN | size | energy | peak_mem (a ratio to the original in ONNX Runtime fp32, measured); ``budget``:
    hard limits such as ``size<=0.2x,ram<=256KB``;
    ``trials``: the study's total (workers sharing a storage count together); ``time_limit``: seconds after which
    no new trial starts. ``worker`` > 0: a helper process of the same study (it only runs trials); ``finish``: write
    best/ and variants/ when the budget of trials is spent; ``wait_for``: called before that (the CLI waits for its
    helper processes there)."""
    from ..runtimes import get_runtime

    # -- every option checked before any work --------------------------------------------------------------
    if not isinstance(model, nn.Module):
        raise ConfigError(f"optimize: model must be a torch.nn.Module, not {type(model).__name__}")
    if not isinstance(data, DataBundle):
        raise ConfigError(f"optimize: data must be a DataBundle, not {type(data).__name__}")
    if objective not in OBJECTIVES:
        from ..core.errors import did_you_mean

        raise ConfigError(f"--objective {objective!r} is not one of {', '.join(OBJECTIVES)}"
                          f"{did_you_mean(objective, OBJECTIVES)}")
    rt = get_runtime(runtime)
    rt.require()
    if objective == "peak_mem" and runtime not in ("ort",):
        raise ConfigError(f"--objective peak_mem is measured for ONNX Runtime only; for {runtime} use "
                          "--budget ram<=...KB (TFLM: the tensor arena) or another objective")
    if objective == "latency_bN" and not rt.batch_n:
        raise ConfigError(f"--objective latency_bN: {runtime} runs one sample at a time; use latency_b1")
    if not isinstance(max_drop, (int, float)) or isinstance(max_drop, bool) or not 0 <= max_drop <= 100:
        raise ConfigError(f"--max-drop {max_drop!r} must be a number of points between 0 and 100")
    if not isinstance(trials, int) or isinstance(trials, bool) or not 1 <= trials <= 100_000:
        raise ConfigError(f"--trials {trials!r} must be a whole number between 1 and 100000")
    if time_limit is not None and not time_limit > 0:
        raise ConfigError("--time must be positive (e.g. 20m, 90s)")
    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    if not isinstance(variants, int) or variants < 0 or variants == 1 or variants > 16:
        raise ConfigError(f"--variants {variants!r}: give 0 (none) or 2..16 models along the front")
    if not isinstance(noise_margin, (int, float)) or isinstance(noise_margin, bool) or not 0 <= noise_margin <= 5:
        raise ConfigError(f"--noise-margin {noise_margin!r} must be a number of standard errors between 0 and 5")
    if val_fraction is not None and not 0.05 <= val_fraction <= 0.5:
        raise ConfigError(f"val_fraction {val_fraction} must be within 0.05..0.5")
    val_from = val_source(data, val_from)  # before any work
    limits = parse_budget(budget)
    for lim in limits:
        if lim.key == "ram" and runtime == "litert":
            raise ConfigError("--budget ram<=...: LiteRT's memory is not measured here; use --runtime tflm (the "
                              "tensor arena) or ort (peak memory of the process)")
    sp = space if isinstance(space, SearchSpace) else SearchSpace.from_registry(
        space, runtime=runtime, model=model, example=data.example_inputs(1))
    out_dir = _check_out(out, inputs)
    from ..pipeline.runner import check_options

    check_options(threads=threads, batch=batch, runs=runs)
    from ..core.checks import check_compatible

    with eval_mode(model):
        check_compatible(model, data)
        return _optimize(model, data, out_dir, sp=sp, max_drop=float(max_drop), objective=objective, limits=limits,
                         rt=rt, trials=trials, time_limit=time_limit, seed=seed, storage=storage,
                         sampler=sampler, variants=variants, threads=threads, batch=batch, runs=runs,
                         references=references, val_fraction=val_fraction, val_from=val_from,
                         noise_margin=float(noise_margin), model_spec=model_spec,
                         command=command, board=board, worker=worker, finish=finish,
                         wait_for=wait_for)


def _check_out(out, inputs) -> Path:
    p = check_output_dir(out, inputs=inputs)
    if p.is_dir() and any(p.iterdir()):
        try:
            kind = json.loads((p / ".slimkit-output.json").read_text()).get("kind")
        except (OSError, ValueError):
            kind = None
        if kind != "optimize":
            raise OutputError(f"--out {p} holds another slimkit output (not an optimize study); give a new folder "
                              "or that study's folder to continue it")
    return p


def _optimize(model, data, out_dir: Path, *, sp, max_drop, objective, limits, rt, trials, time_limit, seed, storage,
              sampler, variants, threads, batch, runs, references, val_fraction, val_from, noise_margin, model_spec,
              command, board, worker, finish, wait_for=None) -> OptimizeResult:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_stale(out_dir, out_dir.parent)
    identity = {"model": fingerprint_model(model), "data": fingerprint_data(data), "space": sp.fingerprint(),
                "objective": objective, "runtime": rt.name, "max_drop": max_drop,
                "budget": [lim.text for lim in limits], "seed": seed, "val_fraction": val_fraction,
                "val_from": val_from, "noise_margin": noise_margin}
    st, where = open_storage(storage, out_dir)
    study = _open_study(st, where, identity, sampler, seed + worker * 7919, trials)
    if not study.trials:  # a new study starts from the points the techniques declare (every worker: no duplicates)
        for params in sp.seed_points():
            study.enqueue_trial(params, skip_if_exists=True)
    if not is_slimkit_folder(out_dir):
        write_output_marker(out_dir, {"kind": "optimize", "model": model_spec or type(model).__name__,
                                      "storage": where if storage else "study.journal", "command": command})
    if worker == 0 and storage is None:
        _fail_dead_trials(study, st)

    search, report_data, about_val = carve_validation(data, val_fraction, seed, val_from)
    step = 100.0 / max(1, len(search.test)) if data.task == "classification" else None
    if step is not None and step > max_drop:
        info(f"slimkit optimize: the validation split has {len(search.test)} samples, one sample = {step:.2f} pt, "
             f"coarser than --max-drop {max_drop}: a candidate passes only with no more validation errors than the "
             "original, and losses smaller than a sample are not seen (give more validation data: npz "
             "x_val/y_val, or --val-fraction)")
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    work = scratch_dir(out_dir)
    try:
        info(f"slimkit optimize: measuring the original ({model_spec or type(model).__name__}) in {rt.name}")
        meter = Meter(model, search, report_data, rt.name, workdir=work / "meter", threads=threads, batch=batch,
                      runs=runs, memory=objective == "peak_mem" or any(lim.key in ("peak_mem", "ram") and
                                                                        rt.name == "ort" for lim in limits),
                      batch_n=objective == "latency_bN" or any(lim.key == "latency_bN" for lim in limits) or
                      rt.name == "ort")
        ctx_base = dict(model=model, search=search, teacher=teacher, seed=seed, meter=meter, max_drop=max_drop,
                        limits=limits, objective=objective, noise_margin=noise_margin)
        refs = _references(out_dir, identity, rt, ctx_base) if references and worker == 0 else \
            _read_json(out_dir / "references.json", {}).get("rows", [])
        _run_trials(study, sp, ctx_base, trials, time_limit, out_dir, meter, identity, refs)
        if wait_for is not None:
            wait_for()
        rows = _trial_rows(study)
        front = pareto_front([r for r in rows if r["state"] == "COMPLETE"])
        best = choose(rows)
        _write_summary(out_dir, rows, front, best, refs, meter, identity)
        result = OptimizeResult(out_dir, best, front, rows, refs)
        if not finish or worker:
            return result
        done = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED", "FAIL")]
        if best is None and not any(r["state"] == "COMPLETE" for r in rows):
            reasons = sorted({r.get("reason", "?") for r in rows if r["state"] == "FAIL"})
            raise ConfigError(f"no technique in the space could be applied to this model in {len(done)} trials"
                              f"{': ' + '; '.join(reasons[:3]) if reasons else ' (every candidate stopped early)'}; "
                              "narrow --space to techniques that apply, or see trials.json")
        if best is None:
            close = sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: r["violation"])[:3]
            said = "; ".join(f"trial {r['number']} {r['name']} ({r['why_infeasible']})" for r in close) or \
                "no candidate completed"
            raise ConfigError(f"no candidate met the budget in {len(done)} trials (max drop {max_drop} pt"
                              f"{', ' + ', '.join(lim.text for lim in limits) if limits else ''}); closest: {said}; "
                              f"relax the budget or run more trials (rerun with a larger --trials: the study "
                              f"continues); trials.json and pareto.json are in {out_dir}")
        headline(f"slimkit optimize: chose trial {best['number']} {best['name']}: {_line(best, objective)}")
        recipe = Recipe.from_dict(best["recipe"])
        extra = {"objective": objective, "pareto": [_plot_point(p, objective, meter.key) for p in front],
                 "references": [_plot_point(r, objective, meter.key) for r in refs if r.get("state") == "COMPLETE"],
                 "planner": {"trials": len(done), "chosen": best["number"], "max_drop": max_drop,
                             "budget": [lim.text for lim in limits], "runtime": rt.name, "sampler": sampler,
                             "validation_samples": len(search.test), "validation_source": about_val["source"],
                             "validation_step_pt": step, "noise_margin": noise_margin,
                             "decided_on": f"validation split: {about_val['note']}; the figures stated come from "
                             f"held-out data ({about_val['test_samples']} samples)"}}
        res = compress(model, recipe, report_data, out=out_dir / "best", model_spec=model_spec, threads=threads,
                       batch=batch, runs=runs, seed=seed, runtimes=[rt] if rt.name != "ort" else (),
                       board=board, command=command, extra_report=extra)
        result.model, result.report = res.model, res.report
        if variants:
            _write_variants(out_dir, rows, variants, ctx_base, rt, report_data, threads, meter)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- the study

def _open_study(st, where, identity, sampler, seed, trials):
    import optuna

    try:
        study = optuna.create_study(study_name=STUDY, storage=st, directions=["maximize", "minimize"],
                                    sampler=_sampler(sampler, seed, trials), load_if_exists=True)
    except Exception as e:  # noqa: BLE001 - a storage that cannot be reached or read
        raise ConfigError(f"cannot open the study in {where} ({type(e).__name__}: {first_line(e, 120)})") from None
    have = study.user_attrs.get("identity")
    if have is None:
        study.set_user_attr("identity", identity)
    elif have != identity:
        diff = ", ".join(k for k in identity if have.get(k) != identity[k])
        raise ConfigError(f"the study in {where} was created for another {diff} (model/data/space/objective/budget "
                          "must match to continue it); give a new --out or --storage to start a new study")
    return study


def _fail_dead_trials(study, st) -> None:
    """Trials left RUNNING by a killed process of this host are marked failed (the trial in flight is lost, no
    more); trials of live processes or other hosts are left to them."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker", "")
        h, _, pid = w.rpartition(":")
        if h == host and pid.isdigit() and not _alive(int(pid)):
            st.set_trial_user_attr(t._trial_id, "reason", "interrupted (its process was killed)")
            st.set_trial_user_attr(t._trial_id, "interrupted", True)
            st.set_trial_state_values(t._trial_id, TrialState.FAIL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _counted(study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("interrupted"))


def _run_trials(study, sp, c, trials, time_limit, out_dir, meter, identity, refs) -> None:
    from optuna.trial import TrialState

    deadline = None if time_limit is None else time.monotonic() + time_limit
    start = _counted(study)
    if start >= trials:
        info(f"slimkit optimize: the study already has {start} trials (asked: {trials}); nothing left to run")
    while _counted(study) < trials:
        if deadline is not None and time.monotonic() > deadline:
            info("slimkit optimize: --time reached; no new trial starts")
            break
        trial = study.ask()
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        t0 = time.perf_counter()
        recipe = None
        try:
            recipe, prec = sp.sample(trial, c["seed"])
            trial.set_user_attr("recipe", recipe.to_dict())
            trial.set_user_attr("precision", prec)
            if not recipe.stages and prec == "fp32":
                raise Unpromising("no technique drawn: the original itself, measured already")
            m = evaluate_candidate(recipe, prec, c)
        except Unpromising as e:
            trial.set_user_attr("reason", str(e))
            study.tell(trial, state=TrialState.PRUNED)
            headline(f"trial {trial.number}{' ' + recipe.name if recipe and recipe.stages else ''}: stopped early "
                     f"({e})")
        except KeyboardInterrupt:
            trial.set_user_attr("reason", "interrupted")
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            raise
        except (SlimkitError, RuntimeError, ValueError) as e:
            trial.set_user_attr("reason", f"{type(e).__name__}: {first_line(e, 200)}")
            study.tell(trial, state=TrialState.FAIL)
            headline(f"trial {trial.number}{' ' + recipe.name if recipe else ''}: failed ({first_line(e, 120)})")
        else:
            m["seconds"] = round(time.perf_counter() - t0, 2)
            for k, v in m.items():
                trial.set_user_attr(k, _plain(v))
            for i, v in enumerate(m["constraint"]):  # drop, then each limit: <= 0 is met
                trial.set_constraint("drop" if i == 0 else c["limits"][i - 1].text, v)
            study.tell(trial, [m["val"], m["ratios"][c["objective"]]])
            rows = _trial_rows(study)
            best = choose(rows)
            headline(f"trial {trial.number} {recipe.name}: {_line(m, c['objective'])}"
                     f"{'' if m['feasible'] else '  [' + m['why_infeasible'] + ']'}"
                     f"   best: {('trial %d %s' % (best['number'], _ratio(best, c['objective']))) if best else 'none yet'}")
        rows = _trial_rows(study)
        _write_summary(out_dir, rows, pareto_front([r for r in rows if r["state"] == "COMPLETE"]), choose(rows),
                       refs, meter, identity)


class HalfwayCheck:
    """Successive halving for one candidate: half-way through its recovery, stop it when its validation metric is
    below ``bar`` and not rising (no more than one standard error of an ``n``-sample accuracy above its value an epoch
    earlier), or ten points below ``bar`` whatever its trend. A recovery's first KD epochs often dip below the
    original before they climb back (HF MobileNetV2's unmodified architecture: 0.808 after 4 of 8 epochs, bar
    0.853, docs/BENCHMARKS.md): a climbing candidate near the bar finishes."""

    FAR = 0.10

    def __init__(self, epochs: int, bar: float, score, n: int = 0):
        self.half = max(1, epochs // 2)
        self.bar, self.score, self.n = bar, score, n
        self.before: Optional[float] = None

    def __call__(self, model, row) -> None:
        if row["epoch"] == self.half - 1:
            self.before = self.score(model)
        if row["epoch"] != self.half:
            return
        v = self.score(model)
        if v >= self.bar:
            return
        se = math.sqrt(max(v * (1 - v), 1e-12) / self.n) if self.n else 0.0
        rising = self.before is not None and v > self.before + se
        if v < self.bar - self.FAR or not rising:
            trend = "" if self.before is None else f" (an epoch before: {self.before:.4f})"
            raise Unpromising(f"validation {v:.4f} after {row['epoch']} epochs{trend}, below {self.bar:.4f}"
                              + ("" if not rising else f" by more than {self.FAR:g}"))


def evaluate_candidate(recipe: Recipe, precision: str, c: dict) -> dict:
    """Build the candidate (the recipe on a copy of the original, recovery on the search split), measure it, and
    judge it against the budget on the validation figures."""
    meter: Meter = c["meter"]
    base_val = meter.original["val"]
    floor = base_val - c["max_drop"] / 100.0
    ft_epochs = [st.finetune.epochs for st in recipe.stages if st.finetune is not None]

    def score(model) -> float:
        with eval_mode(model), torch.no_grad():
            out = torch.cat([model(*x) for x, _ in c["search"].test.batches(256)]).float().numpy()
        from ..evaluate.metrics import task_metrics

        return task_metrics(out, c["search"], meter.ref_val)[meter.key]

    early_stop = HalfwayCheck(max(ft_epochs) if ft_epochs else 1, floor - max(0.02, 2 * c["max_drop"] / 100.0),
                              score, len(c["search"].test) if meter.key == "accuracy" else 0)
    ctx = Context(data=c["search"], teacher=c["teacher"], seed=c["seed"], on_epoch=early_stop)
    check_needs(recipe, ctx)
    seed_everything(c["seed"])
    with muted():
        work, stages = apply_recipe(c["model"], recipe, c["search"], ctx)
        macs = next((s["metrics"].get("macs") for s in reversed(stages) if s["metrics"].get("macs")), None)
        m = meter.measure(work, precision, macs=macs)
    m["name"] = recipe.name
    m["recipe"] = recipe.to_dict()
    m["notes"] = list(ctx.notes)
    m["drop_pt"] = (base_val - m["val"]) * 100.0
    m["test_drop_pt"] = (meter.original["test"] - m["test"]) * 100.0
    z = c.get("noise_margin", 0.0)
    judged = m["drop_pt"] + z * m.get("val_drop_se_pt", 0.0)  # the drop, with the validation noise on top
    m["judged_drop_pt"] = judged
    viol = [judged / max(c["max_drop"], 1e-9) - 1.0 if c["max_drop"] > 0 else judged]
    why = []
    if not judged <= c["max_drop"] + 1e-9:
        why.append(f"drop {m['drop_pt']:.2f} pt" + (f" + {z:g} x {m['val_drop_se_pt']:.2f} pt validation noise"
                                                     if z and m.get("val_drop_se_pt") else "") + f" > {c['max_drop']}")
    for lim in c["limits"]:
        v = lim.violation(m)
        viol.append(v)
        if v > 1e-9:
            got = lim.measured(m)
            why.append(f"{lim.text} missed ({'not measured' if got is None else _fmt(got, lim)})")
    m["constraint"] = [float(min(v, 1e6)) for v in viol]
    m["violation"] = float(sum(max(0.0, min(v, 1e6)) for v in viol))
    m["feasible"] = not why
    m["why_infeasible"] = "; ".join(why)
    return m


def _fmt(v, lim: Limit) -> str:
    if lim.relative:
        return f"{v:.3f}x"
    if lim.key.startswith("latency"):
        return f"{v:.3f} ms"
    return f"{v / 1024:.1f} KB" if lim.key in ("ram", "flash", "size", "peak_mem") else f"{v:.4g}"


# ----------------------------------------------------------------------------------------------- rows, front, choice

def _plain(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _trial_rows(study) -> list[dict]:
    objective = study.user_attrs.get("identity", {}).get("objective", "latency_b1")
    rows = []
    for t in study.get_trials(deepcopy=False):
        r = dict(t.user_attrs)
        r.update(number=t.number, state=t.state.name)
        r.setdefault("name", r.get("recipe", {}).get("name", "?"))
        if r.get("ratios"):
            r["objective_key"] = objective
            r["objective_value"] = r["ratios"].get(objective)
        rows.append(r)
    return rows


def choose(rows: list[dict]) -> Optional[dict]:
    """The feasible complete trial with the lowest objective ratio; ties go to the higher validation metric."""
    ok = [r for r in rows if r.get("state") == "COMPLETE" and r.get("feasible")]
    if not ok:
        return None
    obj = ok[0].get("objective_key")
    return min(ok, key=lambda r: (round(r["objective_value"], 4), -r["val"], r["number"])) if obj else None


def pareto_front(rows: list[dict]) -> list[dict]:
    """Trials not dominated on (validation metric up, objective ratio down), sorted by the objective."""
    pts = [r for r in rows if isinstance(r.get("objective_value"), (int, float))]
    front = []
    for r in pts:
        if not any(_dominates(o, r) for o in pts if o is not r):
            front.append(r)
    return sorted(front, key=lambda r: r["objective_value"])


def _dominates(a: dict, b: dict) -> bool:
    return (a["val"] >= b["val"] and a["objective_value"] <= b["objective_value"]
            and (a["val"] > b["val"] or a["objective_value"] < b["objective_value"]))


def dominated_by(ref: dict, rows: list[dict]) -> list[int]:
    """Trials at least as good as ``ref`` on validation metric, batch-1 and batch-N latency and size, and better on
    one (the bench's "the front dominates every built-in recipe")."""
    keys = ("latency_b1", "latency_bN", "size")
    out = []
    for r in rows:
        if r.get("state") != "COMPLETE":
            continue
        a = [r["val"]] + [-r["ratios"].get(k, math.inf) for k in keys]
        b = [ref["val"]] + [-ref["ratios"].get(k, math.inf) for k in keys]
        if all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b)):
            out.append(r["number"])
    return out


def _ratio(m: dict, objective: str) -> str:
    v = m.get("ratios", {}).get(objective)
    return f"{objective} {v:.3f}x" if isinstance(v, (int, float)) else f"{objective} n/a"


def _line(m: dict, objective: str) -> str:
    r = m.get("ratios", {})
    noise = f", drop {m['drop_pt']:.2f} +- {m['val_drop_se_pt']:.2f} pt" if "val_drop_se_pt" in m else ""
    parts = [f"val {m['val']:.4f}{noise} (test {m['test']:.4f})", _ratio(m, objective)]
    for k in ("latency_b1", "latency_bN", "size"):
        if k != objective and k in r:
            parts.append(f"{k} {r[k]:.3f}x")
    return ", ".join(parts)


def _plot_point(r: dict, objective: str, key: str) -> dict:
    return {"name": f"{'trial %s: ' % r['number'] if 'number' in r else ''}{r.get('name')}",
            objective: r.get("ratios", {}).get(objective), key: r.get("test"), "val": r.get("val")}


def _write_summary(out_dir: Path, rows, front, best, refs, meter: Meter, identity) -> None:
    atomic_write_text(out_dir / "trials.json", json.dumps(
        {"generated_by": "slimkit", "identity": identity, "original": _plain(meter.original),
         "trials": _plain(rows)}, indent=1))
    refs_out = []
    for ref in refs:
        ref = dict(ref)
        if ref.get("state") == "COMPLETE":
            ref["dominated_by"] = dominated_by(ref, rows)
        refs_out.append(ref)
    atomic_write_text(out_dir / "pareto.json", json.dumps(
        {"generated_by": "slimkit", "objective": identity["objective"], "metric": meter.key,
         "original": {"val": meter.original["val"], "test": meter.original["test"]},
         "front": [_slim(r) for r in front], "chosen": None if best is None else _slim(best),
         "references": [_slim(r) | {"dominated_by": r.get("dominated_by", [])} for r in refs_out],
         "validation_from": identity.get("val_from"),
         "note": "decided on the validation split (val); test is the held-out split, stated only"}, indent=1))


def _slim(r: dict) -> dict:
    keep = ("number", "name", "state", "val", "test", "drop_pt", "test_drop_pt", "ratios", "size_bytes", "macs",
            "latency_ms_p50_b1", "latency_ms_p50_bN", "feasible", "why_infeasible", "recipe", "precision")
    return _plain({k: r[k] for k in keep if k in r})


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


# ----------------------------------------------------------------------------------------------- references

def _references(out_dir: Path, identity: dict, rt, c: dict) -> list[dict]:
    """The built-in recipes that apply, measured exactly like a trial (cached in references.json per study)."""
    have = _read_json(out_dir / "references.json", {})
    if have.get("identity") == identity:
        return have.get("rows", [])
    rows = []
    for name in REFERENCE_RECIPES:
        recipe = Recipe.load(name)
        quant = any(s.type.startswith("quantize.") for st in recipe.stages for s in st.techniques)
        if quant and rt.name != "ort":
            continue
        t0 = time.perf_counter()
        try:
            m = evaluate_candidate(recipe, "int8" if rt.name == "tflm" else "fp32", c | {"max_drop": 100.0})
            m["state"] = "COMPLETE"
            m["seconds"] = round(time.perf_counter() - t0, 2)
            m["drop_ok"] = m["judged_drop_pt"] <= c["max_drop"] + 1e-9
            headline(f"reference {name}: {_line(m, c['objective'])}")
        except (SlimkitError, RuntimeError, ValueError) as e:
            m = {"name": name, "state": "FAIL", "reason": first_line(e, 200)}
            info(f"reference {name}: does not apply ({first_line(e, 100)})")
        m["name"] = name
        rows.append(_plain(m))
    atomic_write_text(out_dir / "references.json", json.dumps({"generated_by": "slimkit", "identity": identity,
                                                               "rows": rows}, indent=1))
    return rows


# ----------------------------------------------------------------------------------------------- variants

def pick_variants(rows: list[dict], k: int) -> list[dict]:
    """K candidates for the on-device family: the measured front (validation metric up, objective down) first, then
    the next non-dominated layers when the front is shorter than K; spread by objective."""
    pool = [r for r in rows if r.get("state") == "COMPLETE" and isinstance(r.get("objective_value"), (int, float))]
    layers = []
    while pool and sum(len(x) for x in layers) < k:
        front = pareto_front(pool)
        layers.append(front)
        ids = {id(r) for r in front}
        pool = [r for r in pool if id(r) not in ids]
    picks = [r for layer in layers for r in layer]
    if len(picks) > k:
        first = layers[0]
        rest = sorted((r for layer in layers[1:] for r in layer), key=lambda r: r["objective_value"])
        need = k - len(first)
        if need <= 0:
            idx = sorted({round(i * (len(first) - 1) / (k - 1)) for i in range(k)})
            return [first[i] for i in idx]
        idx = sorted({round(i * (len(rest) - 1) / max(1, need - 1)) for i in range(need)})
        picks = first + [rest[i] for i in idx]
    return sorted(picks, key=lambda r: r["objective_value"])


def _write_variants(out_dir: Path, rows, k, c, rt, report_data, threads, meter) -> None:
    from ..ondevice import selector as sel

    picks = pick_variants(rows, k)
    tmp = scratch_dir(out_dir)
    try:
        rows = []
        for i, r in enumerate(sorted(picks, key=lambda r: -r["val"])):
            recipe = Recipe.from_dict(r["recipe"])
            ctx = Context(data=c["search"], teacher=c["teacher"], seed=c["seed"])
            seed_everything(c["seed"])
            with muted():
                work, _ = apply_recipe(c["model"], recipe, c["search"], ctx)
                fname = f"v{i}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', recipe.name)}{rt.suffix}"
                art = rt.export(work, report_data, tmp / fname, r.get("precision", "fp32"),
                                **({} if rt.name == "ort" else {"batch": 1}))
            mem = peak_memory(art.path, meter.ex1, threads).get("peak_mem_bytes") if rt.name == "ort" else None
            rows.append({"file": fname, "name": recipe.name, "trial": r["number"], "runtime": rt.name,
                         "metric": meter.key, "value": r["test"], "val": r["val"],
                         "latency_ms_p50_b1": r.get("latency_ms_p50_b1"), "latency_ms_p50_bN": r.get("latency_ms_p50_bN"),
                         "latency_ms_p90_b1": r.get("latency_ms_p90_b1"),
                         "size_bytes": Path(art.path).stat().st_size, "peak_mem_bytes": mem,
                         "input_shape": [1, *report_data.input_shapes()[0]],
                         "precision": r.get("precision", "fp32")})
        manifest = {"generated_by": "slimkit", "metric": meter.key, "runtime": rt.name, "threads": threads,
                    "measured_on": "this machine, timed interleaved with the original; the selector re-times on "
                                   "the device", "variants": rows}
        atomic_write_text(tmp / "manifest.json", json.dumps(_plain(manifest), indent=1))
        shutil.copyfile(sel.__file__, tmp / "selector.py")
        write_output_marker(tmp, {"kind": "variants", "files": sorted(p.name for p in tmp.iterdir())})
        publish_dir(tmp, out_dir / "variants")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    headline(f"slimkit optimize: {len(rows)} variants along the front in {out_dir / 'variants'} "
             "(manifest.json, selector.py)")
