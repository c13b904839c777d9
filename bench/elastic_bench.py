"""A variant family two ways: Once-for-All-style (one elastic network trained once, sub-networks cut out without
retraining; ``prune/elastic.py``) against one by one (each variant pruned from the original and recovered by
distillation on its own, as the planner's NAS trials and the distill-student recipe do), same widths, same
channel ranking, same epochs, same KD settings (T = 4, half hard labels, lr 0.002, batch 64).

Accuracy on the held-out test split (PyTorch; the two routes give the same architectures, so their latency and size
are the same); wall time of each route on this machine (1 thread per process, the bench alone).

    python bench/elastic_bench.py [--models digits-cnn,mnist1d-cnn] [--epochs 40] [--widths 0.25,0.375,0.5,0.75]
                                  [--finetune 5] [--seeds 0,1]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from slimkit.core import Context
from slimkit.core.context import torch_threads
from slimkit.distill.finetune import Finetune
from slimkit.distill.trainer import recover
from slimkit.evaluate.macs import count_macs, count_params
from slimkit.load import resolve
from slimkit.prune.structured import StructuredPruneConfig, structured_prune
from slimkit.prune.elastic import ElasticConfig, Supernet


def _acc(model, split) -> float:
    with torch.no_grad():
        return float((torch.cat([model(*x) for x, _ in split.batches(512)]).argmax(1) == split.targets).float().mean())


def run(name: str, epochs: int, widths: list[float], finetune: int, seed: int) -> tuple[list, dict]:
    lm, data = resolve(f"zoo:{name}")
    model = lm.model.eval()
    ex = data.example_inputs(2)
    base_macs, base_params = count_macs(model, data.example_inputs(1)), count_params(model)
    ft = Finetune(method="kd", epochs=epochs, lr=0.002, batch_size=64, temperature=4.0, alpha=0.5)

    def ctx():
        return Context(data=data, teacher=copy.deepcopy(model).eval(), seed=seed)

    rows = {w: {"width": w} for w in widths}
    t_one = 0.0
    for w in widths:  # one by one: prune from the original, recover alone
        t0 = time.perf_counter()
        m = structured_prune(model, StructuredPruneConfig(ratio=1 - w, max_ratio=1 - min(widths)),
                             Context(data=data, seed=seed))
        recover(m, ctx(), ft)
        dt = time.perf_counter() - t0
        t_one += dt
        rows[w].update(macs=count_macs(m, data.example_inputs(1)) / base_macs, params=count_params(m) / base_params,
                       one=_acc(m, data.test), one_s=dt)
    t0 = time.perf_counter()
    sn = Supernet(model, ex, ElasticConfig(epochs=epochs, lr=0.002, batch_size=64, temperature=4.0, alpha=0.5,
                                           min_width=min(widths))).train(ctx())
    t_train = time.perf_counter() - t0
    t_cut = 0.0
    for w in widths:
        t0 = time.perf_counter()
        sub = sn.extract({g: w for g in sn.groups}, data)
        t_cut += time.perf_counter() - t0
        rows[w].update(ofa=_acc(sub, data.test), ofa_params=count_params(sub) / base_params)
        if finetune:
            t0 = time.perf_counter()
            recover(sub, ctx(), Finetune(method="kd", epochs=finetune, lr=0.0005, batch_size=64, temperature=4.0))
            rows[w].update(ofa_ft=_acc(sub, data.test), ofa_ft_s=time.perf_counter() - t0)
    cost = {"one": t_one, "train": t_train, "cut": t_cut, "orig": _acc(model, data.test)}
    return list(rows.values()), cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits-cnn,mnist1d-cnn")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--widths", default="0.25,0.375,0.5,0.75")
    ap.add_argument("--finetune", type=int, default=5, help="epochs of KD after cutting a sub-network out (0: none)")
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args()
    widths = [float(w) for w in args.widths.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.models.split(","):
        per_seed = []
        with torch_threads(1):
            for s in seeds:
                per_seed.append(run(name, args.epochs, widths, args.finetune, s))
        cost0 = per_seed[0][1]
        print(f"\n#### zoo:{name}: {len(widths)} variants, {args.epochs} epochs of KD each route, seeds "
              f"{args.seeds} (test accuracy; original {100 * cost0['orig']:.2f}%)\n")
        head = "| width | MACs | params | one by one (pruned + KD alone) | elastic, cut out, no retraining |"
        sep = "|---|---|---|---|---|"
        if args.finetune:
            head += f" elastic + {args.finetune} epochs KD |"
            sep += "---|"
        print(head + "\n" + sep)

        def cell(key, i):
            vals = [100 * rows[i][key] for rows, _ in per_seed]
            return f"{sum(vals) / len(vals):.2f}%" + (f" ({min(vals):.2f}-{max(vals):.2f})" if len(vals) > 1 else "")

        for i, r in enumerate(per_seed[0][0]):
            line = (f"| {r['width']} | {r['macs']:.3f}x | {r['params']:.3f}x | {cell('one', i)} | {cell('ofa', i)} |")
            if args.finetune:
                line += f" {cell('ofa_ft', i)} |"
            print(line)
        for s, (rows, c) in zip(seeds, per_seed):
            ft_s = sum(r.get("ofa_ft_s", 0.0) for r in rows)
            print(f"\nseed {s}: one by one {c['one']:.0f} s for {len(rows)} variants ({c['one'] / len(rows):.0f} s each); "
                  f"elastic: training {c['train']:.0f} s once + cutting out {c['cut']:.1f} s"
                  + (f" (+ {ft_s:.0f} s for the short fine-tunes)" if args.finetune else "")
                  + f"; break-even at {c['train'] / (c['one'] / len(rows)):.1f} variants")


if __name__ == "__main__":
    main()
