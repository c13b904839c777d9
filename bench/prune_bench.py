"""Pruning benchmark: slimkit's structured pruning vs Torch-Pruning, side by side in one run.

    python bench/prune_bench.py [--only digits-cnn,mnist1d-cnn] [--epochs 20] [--threads 1]
    python bench/prune_bench.py --deep-compression      # digits-mlp, prune -> cluster -> int8 -> zstd

Structured section: every variant removes ~50% of the MACs and is then recovered
with the same budget (slimkit's KD trainer at T = 1 as in the prune-structured-50
recipe, same epochs, lr and seed), so only the choice of channels differs; then KD
vs plain recovery of one pruned model over three seeds. Peer: Torch-Pruning's MetaPruner with its defaults
(uniform ratio, L2 magnitude importance), its ratio bisected to the same MAC
target (`pip install torch-pruning`; skipped with a note if missing). Each ONNX
file is timed interleaved with the unpruned one in the same process.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

os.environ.setdefault("SLIMKIT_QUIET", "1")

from slimkit.core import Context  # noqa: E402
from slimkit.distill.trainer import recover  # noqa: E402
from slimkit.evaluate.macs import count_macs  # noqa: E402
from slimkit.load import resolve  # noqa: E402
from slimkit.pipeline.recipe import Finetune  # noqa: E402
from slimkit.prune import StructuredPruneConfig, structured_prune  # noqa: E402

from _common import latency_cells, side_by_side  # noqa: E402


def torch_pruning_peer(model, data, target: float):
    """Torch-Pruning defaults: MetaPruner, uniform ratio, L2 magnitude; ratio bisected to ``target`` MACs removed."""
    import torch_pruning as tp

    ex = data.example_inputs(1)
    base = count_macs(model, ex)
    last = next(m for m in reversed(list(model.modules())) if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    ign_name = next(n for n, m in model.named_modules() if m is last)

    def prune(r):
        m = copy.deepcopy(model)
        tp.pruner.MetaPruner(m, ex, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=r,
                             ignored_layers=[m.get_submodule(ign_name)]).step()
        return m

    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        mid = (lo + hi) / 2
        m = prune(mid)
        if 1 - count_macs(m, ex) / base >= target:
            hi, best = mid, m
        else:
            lo = mid
    return best, hi


def structured(names, epochs: int, threads: int, target: float) -> str:
    out = []
    for name in names:
        lm, data = resolve(f"zoo:{name}")
        model = lm.model.eval()
        variants, methods = {}, {}
        for alloc, rt in (("uniform", 8), ("sensitivity", 8), ("uniform", 1)):
            ctx = Context(data=data, teacher=model)
            lbl = f"slimkit {alloc}" + (", round_to 1" if rt == 1 else "")
            variants[lbl] = structured_prune(model, StructuredPruneConfig(
                target_macs=target, allocation=alloc, round_to=rt), ctx)
        # the distillation issue's question: KD vs plain fine-tuning for the same pruned model and budget
        variants["slimkit uniform, plain fine-tune"] = copy.deepcopy(variants["slimkit uniform"])
        methods["slimkit uniform, plain fine-tune"] = "plain"
        try:
            peer, ratio = torch_pruning_peer(model, data, target)
            variants[f"Torch-Pruning (ratio {ratio:.3f})"] = peer
        except ImportError:
            print("torch-pruning is not installed: peer skipped (pip install torch-pruning)", file=sys.stderr)
        for lbl, m in variants.items():
            ft = Finetune(method=methods.get(lbl, "kd"), epochs=epochs, lr=0.002, temperature=1.0)
            recover(m, Context(data=data, teacher=model), ft)
        res = side_by_side({"unpruned": model, **variants}, data, threads)
        rows = [f"### {name}: ~{target:.0%} fewer MACs, then {epochs} epochs of recovery (KD unless noted)", "",
                "| variant | accuracy | params | MACs | MACs vs fp32 | ORT b1 | ORT bN | PyTorch b1 | PyTorch bN |",
                "|---|---|---|---|---|---|---|---|---|"]
        for lbl, m in res["metrics"].items():
            r = res["ratios"].get(lbl, {})
            rows.append(f"| {lbl} | {100 * m['accuracy']:.2f}% | {m['params']:,} | {m['macs']:,} | "
                        f"{r.get('macs', 1.0):.3f} | {latency_cells(r)} |")
        out.append("\n".join(rows))
        print(out[-1], flush=True)
        out.append(kd_vs_plain(name, model, data, target, epochs))
        print(out[-1], flush=True)
    return "\n\n".join(out)


def kd_vs_plain(name: str, model, data, target: float, epochs: int) -> str:
    """The distillation issue's question over 3 seeds: the same uniformly pruned model recovered with
    plain fine-tuning vs KD (T=1 as in the prune-structured-50 recipe, and the trainer's default T=4), same epochs,
    lr and data order per seed."""
    import statistics as st

    pruned = structured_prune(model, StructuredPruneConfig(target_macs=target, allocation="uniform"),
                              Context(data=data, teacher=model))
    rows = ["", f"{name}, slimkit uniform, {epochs} epochs of recovery, seeds 0, 1, 2 (test accuracy):", "",
            "| recovery | mean +- std | per seed |", "|---|---|---|"]
    for lbl, kw in (("plain fine-tuning", dict(method="plain")),
                    ("KD, T = 1 (the pruning recipe's)", dict(method="kd", temperature=1.0)),
                    ("KD, T = 4 (the trainer's default)", dict(method="kd", temperature=4.0))):
        accs = []
        for seed in (0, 1, 2):
            m = copy.deepcopy(pruned)
            recover(m, Context(data=data, teacher=model, seed=seed), Finetune(epochs=epochs, lr=0.002, **kw))
            with torch.no_grad():
                out = torch.cat([m(*x) for x, _ in data.test.batches(512)])
            accs.append(100 * float((out.argmax(-1) == data.test.targets).float().mean()))
        rows.append(f"| {lbl} | {st.mean(accs):.2f} +- {st.stdev(accs):.2f} | {', '.join(f'{a:.2f}' for a in accs)} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="digits-cnn,mnist1d-cnn")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--deep-compression", action="store_true")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    if a.deep_compression:
        deep_compression(a.threads)
        return 0
    structured([n for n in a.only.split(",") if n], a.epochs, a.threads, a.target)
    return 0


def deep_compression(threads: int) -> str:
    """Unstructured recipes end to end (compress(): recipe, recovery, ONNX, .slim, side-by-side timing)."""
    from slimkit.pipeline.runner import compress

    rows = ["| model | recipe | accuracy fp32 -> compressed | fp32 ONNX | .slim | .slim vs fp32 ONNX | non-zero params |",
            "|---|---|---|---|---|---|---|"]
    for name, recipe in (("digits-mlp", "deep-compression"), ("digits-cnn", "prune-unstructured-90"),
                         ("digits-cnn", "prune-gradual-90")):
        lm, data = resolve(f"zoo:{name}")
        res = compress(lm.model, recipe, data, threads=threads)
        b, c = res.baseline, res.compressed
        rows.append(f"| {name} | {recipe} | {100 * b['accuracy']:.2f}% -> {100 * c['accuracy']:.2f}% | "
                    f"{b['size_bytes']:,} B | {c['size_bytes_compressed']:,} B | "
                    f"{c['size_ratio_compressed_vs_fp32_onnx']:.4f} ({1 / c['size_ratio_compressed_vs_fp32_onnx']:.1f}x "
                    f"smaller) | {c['params_nonzero']:,} of {c['params']:,} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    return table


if __name__ == "__main__":
    sys.exit(main())
