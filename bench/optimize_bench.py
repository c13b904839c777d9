"""The planner against the built-in recipes and against random search with the same trial budget.

For each model: one `slimkit optimize` study with the TPE sampler (the built-in recipes measured beside it as
references, exactly like trials), then one with random search; every figure is measured in ONNX Runtime, timed
interleaved with the original in the same process. Decisions use the validation split carved from the training
data; the accuracies stated (test) come from the held-out test split.

    python bench/optimize_bench.py [--models digits-cnn,mnist1d-cnn] [--trials 30] [--objective latency_bN]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from slimkit.evaluate.metrics import primary_metric
from slimkit.load import resolve
from slimkit.search.planner import choose, optimize


def _row(name, r, key="accuracy"):
    rt = r.get("ratios", {})
    v = (f"{100 * r['val']:.2f}%", f"{100 * r['test']:.2f}%") if key == "accuracy" else \
        (f"{r['val']:.4f}", f"{r['test']:.4f}")
    return (f"| {name} | {v[0]} | {v[1]} | {rt.get('latency_b1', float('nan')):.3f}x | "
            f"{rt.get('latency_bN', float('nan')):.3f}x | {rt.get('size', float('nan')):.3f}x | "
            f"{'yes' if (r['drop_ok'] if 'drop_ok' in r else r.get('feasible')) else 'no'} |")


def run(model: str, trials: int, objective: str, max_drop: float, val_from: str = "auto",
        samplers: tuple = ("tpe", "random"), space=None, references: bool = True) -> str:
    lm, data = resolve(f"zoo:{model}", None)
    lines = [f"#### zoo:{model}: {trials} trials, objective {objective}, max drop {max_drop} pt, validation from "
             f"{val_from} (1 thread; ratios vs the original in ONNX Runtime fp32, timed interleaved)", ""]
    results = {}
    for sampler in samplers:
        with tempfile.TemporaryDirectory() as td:
            t0 = time.perf_counter()
            res = optimize(lm.model, data, out=Path(td) / "o", trials=trials, objective=objective, max_drop=max_drop,
                           sampler=sampler, references=references and sampler == samplers[0],
                           model_spec=f"zoo:{model}", seed=0, val_from=val_from, space=space)
            results[sampler] = (res, time.perf_counter() - t0)
            if sampler == samplers[0]:
                orig_val = json.loads((Path(td) / "o" / "pareto.json").read_text())["original"]["val"]
    res, wall = results[samplers[0]]
    orig = next(iter(res.trials), {})
    lines += ["| candidate | val | test | ORT b1 | ORT bN | size | within max drop (val) |",
              "|---|---|---|---|---|---|---|"]
    meter_orig = res.report.get("baseline", {}) if res.report else {}
    key = primary_metric(data)  # accuracy, or fidelity (cosine) for an embedding model
    lines.append(f"| original | {100 * orig_val:.2f}% | {100 * meter_orig.get(key, float('nan')):.2f}% | 1.000x "
                 "| 1.000x | 1.000x | |")
    for ref in res.references:
        if ref.get("state") == "COMPLETE":
            lines.append(_row(f"built-in {ref['name']}", ref))
        else:
            lines.append(f"| built-in {ref['name']} | did not apply: {ref.get('reason', '')[:80]} | | | | | |")
    for p in res.front:
        lines.append(_row(f"front: trial {p['number']} {p['name']}", p))
    best_r = choose(results["random"][0].trials) if "random" in results else None
    lines.append(_row(f"**chosen ({samplers[0]})**: trial {res.best['number']} {res.best['name']}", res.best))
    if best_r:
        lines.append(_row(f"chosen (random search): trial {best_r['number']} {best_r['name']}", best_r))
    comp = res.report["ratios"] if res.report else {}
    lines += ["", f"best/ (the chosen recipe rebuilt and measured by `compress` on the test split): {key} "
              f"{100 * res.report['compressed'][key]:.2f}% (original {100 * res.report['baseline'][key]:.2f}%), "
              f"ORT b1 {comp.get('latency_ms_p50_b1', float('nan')):.3f}x, bN {comp.get('latency_ms_p50_bN', float('nan')):.3f}x, "
              f"file {comp.get('size_bytes', float('nan')):.3f}x."]
    dominated = [r["name"] for r in res.references if r.get("state") == "COMPLETE"
                 and _dominated(r, res.trials)]
    refs_done = [r for r in res.references if r.get("state") == "COMPLETE"]
    lines.append(f"Built-in recipes dominated by a trial (val metric, ORT b1, ORT bN and size at once): "
                 f"{len(dominated)} of {len(refs_done)} ({', '.join(dominated) or 'none'}).")
    for s, (r, w) in results.items():
        done = [t for t in r.trials if t["state"] in ("COMPLETE", "PRUNED", "FAIL")]
        st = {k: sum(1 for t in r.trials if t["state"] == k) for k in ("COMPLETE", "PRUNED", "FAIL")}
        b = choose(r.trials)
        lines.append(f"{s}: wall {w:.0f} s for {len(done)} trials ({60 * len(done) / w:.1f} trials/min incl. "
                     f"references and best/), states {st}, best {objective} "
                     f"{b['ratios'][objective]:.3f}x" if b else f"{s}: no feasible trial")
    del orig
    return "\n".join(lines)


def run_nas(model: str, trials: int, objective: str, max_drop: float, val_from: str = "auto",
            elastic: bool = False, widths_only: bool = False) -> str:
    """NAS over the model's own channel widths (prune.widths: one kept share per channel group, teacher-initialised,
    KD-recovered) against the hand-designed half-width student of the distill-student recipe, three seeds."""
    from slimkit.pipeline.recipe import Recipe
    from slimkit.search.planner import carve_validation, evaluate_candidate
    from slimkit.search.measure import Meter
    import copy

    lm, data = resolve(f"zoo:{model}", None)
    # elastic: candidates cut out of one supernet trained once (prune.elastic), then 0-10 epochs of KD each
    space = ({"prune.elastic": {}, "finetune": {"epochs": [0, 10], "temperature": [1.0, 4.0]}} if elastic else
             {"prune.widths": {"kernels": 0} if widths_only else {},
              "finetune": {"epochs": [10, 40], "temperature": [1.0, 4.0]}})
    with tempfile.TemporaryDirectory() as td:
        t0 = time.perf_counter()
        res = optimize(lm.model, data, out=Path(td) / "o", trials=trials, objective=objective, max_drop=max_drop,
                       space=space, references=False, model_spec=f"zoo:{model}", seed=0, val_from=val_from)
        wall = time.perf_counter() - t0
        search, report, _ = carve_validation(data, None, 0, val_from)
        meter = Meter(lm.model, search, report, "ort", workdir=Path(td) / "m")
        teacher = copy.deepcopy(lm.model).eval()
        rows = []
        for seed in (0, 1, 2):
            c = dict(model=lm.model, search=search, teacher=teacher, seed=seed, meter=meter, max_drop=100.0, limits=[],
                     objective=objective)
            rows.append(evaluate_candidate(Recipe.load("distill-student"), "fp32", c))
    import statistics

    accs = [100 * r["test"] for r in rows]
    how = "cut out of one elastic network (prune.elastic), 0-10 epochs KD each" if elastic else \
        ("pruned from the teacher, 10-40 epochs KD each (prune.widths" + (", kernels as they are)" if widths_only
                                                                           else ")"))
    lines = [f"#### zoo:{model}: NAS over channel widths, candidates {how} ({trials} trials, objective {objective}, max drop {max_drop} "
             "pt) vs the distill-student recipe (half width, 40 epochs KD), 3 seeds", "",
             "| candidate | val | test | ORT b1 | ORT bN | size | within max drop (val) |", "|---|---|---|---|---|---|---|"]
    for seed, r in zip((0, 1, 2), rows):
        lines.append(_row(f"distill-student, seed {seed}", r))
    if res.best:
        lines.append(_row(f"**NAS chosen** (fastest within max drop): trial {res.best['number']} {res.best['name']}",
                          res.best))
    # the comparison: the searched architecture at equal or lower latency than the student, the most
    # accurate one *on validation* among those (the test column is only read, never used to pick)
    lat = max(r["ratios"][objective] for r in rows)
    same = [t for t in res.trials if t.get("state") == "COMPLETE" and t.get("ratios", {}).get(objective, 9) <= lat]
    peer = max(same, key=lambda t: (t["val"], -t["ratios"][objective]), default=None)
    if peer:
        lines.append(_row(f"**NAS at <= the student's {objective}** (best validation): trial {peer['number']} "
                          f"{peer['name']}", peer))
    spread = max(accs) - min(accs)
    lines += ["", f"distill-student test accuracy {statistics.mean(accs):.2f} (range {min(accs):.2f}-{max(accs):.2f}, "
              f"spread {spread:.2f} pt; seeds 0-2) at {objective} <= {lat:.3f}x"
              + (f"; NAS at <= that latency: {100 * peer['test']:.2f}% test ({objective} "
                 f"{peer['ratios'][objective]:.3f}x), {100 * peer['test'] - max(accs):+.2f} pt against the student's "
                 f"best seed" if peer else "; no NAS trial at that latency")
              + f"; study wall {wall:.0f} s."]
    return "\n".join(lines)


def _dominated(ref, trials):
    from slimkit.search.planner import dominated_by

    return bool(dominated_by(ref, trials))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="digits-cnn")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--objective", default="latency_bN")
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("--nas", action="store_true", help="the width-NAS study vs the distill-student recipe instead")
    ap.add_argument("--elastic", action="store_true", help="with --nas: candidates cut out of one elastic network")
    ap.add_argument("--widths-only", action="store_true", help="with --nas: channel widths only (kernels kept)")
    ap.add_argument("--val-from", default="auto", help="auto | train | test | val (slimkit optimize --val-from)")
    ap.add_argument("--samplers", default="tpe,random")
    ap.add_argument("--space", default=None, help="slimkit optimize --space (names or an inline YAML mapping)")
    ap.add_argument("--no-references", action="store_true", help="do not measure the built-in recipes beside it")
    a = ap.parse_args()
    for m in a.models.split(","):
        if a.nas:
            print(run_nas(m, a.trials, a.objective, a.max_drop, a.val_from, a.elastic, a.widths_only), flush=True)
            continue
        print(run(m, a.trials, a.objective, a.max_drop, a.val_from, tuple(a.samplers.split(",")), a.space,
                  not a.no_references), flush=True)
        print()


if __name__ == "__main__":
    main()
