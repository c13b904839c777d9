"""The foreign-architecture set x the recipes a user tries first: what each one does to models slimkit was not
built around. Every cell is one ``slimkit compress`` process, run as a user runs it, so that its outcome is what the
user sees (done, refused with a one-line error, or a crash), its figures come from its report.json (accuracy on
the held-out split in ONNX Runtime, size and latency ratios against the original, measured side by side), and its
tool cost is that process's wall time and peak resident memory.

    python bench/generality_bench.py                                  # every foreign model x the default recipes
    python bench/generality_bench.py --models hf-vit,gru --recipes int8-static,prune-structured-50
    python bench/generality_bench.py --pt2 --models hf-resnet,gru    # each model given as a torch.export .pt2 file
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slimkit.zoo.foreign import FOREIGN

RECIPES = ["int8-static", "int8-dynamic", "qat-4bit", "mixed-precision", "prune-structured-50", "lowrank-auto",
           "prune-unstructured-90"]


def save_pt2(model: str, work: Path) -> Path:
    """The trained foreign model as a user hands it over from torch.export: a .pt2 file with a dynamic batch."""
    import torch

    from slimkit.zoo import load_zoo_model, zoo_data
    from slimkit.zoo.registry import ZOO

    path = work / f"{model}.pt2"
    if not path.exists():
        data = zoo_data(ZOO[model].data)
        m = load_zoo_model(model, data).eval()
        x = data.example_inputs(2)
        ep = torch.export.export(m, x, dynamic_shapes=tuple({0: torch.export.Dim("batch")} for _ in x))
        torch.export.save(ep, path)
    return path


def run_cell(model: str, recipe: str, work: Path, runs: int, pt2: bool = False) -> dict:
    out = work / f"{model}-{recipe}"
    if pt2:
        from slimkit.zoo.registry import ZOO

        source = [str(save_pt2(model, work)), "--data", f"zoo:{ZOO[model].data}"]
    else:
        source = [f"zoo:{model}"]
    hwm = work / "hwm"
    hwm.unlink(missing_ok=True)
    # the CLI as a user runs it, wrapped so that the child reports its own peak RSS (VmHWM) at exit: wait4's
    # ru_maxrss would also count the pages it shared with this parent (torch loaded here) before exec
    wrap = ("import atexit, runpy, sys\n"
            "def _hwm():\n"
            "    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            f"    open({str(hwm)!r}, 'w').write(line.split()[1])\n"
            "atexit.register(_hwm)\n"
            "sys.argv = ['slimkit'] + sys.argv[1:]\n"
            "runpy.run_module('slimkit', run_name='__main__', alter_sys=True)\n")
    cmd = [sys.executable, "-c", wrap, "compress", *source, "--recipe", recipe, "--out", str(out),
           "--runs", str(runs), "--quiet"]
    t0 = time.perf_counter()
    with open(work / "stdout", "wb") as so, open(work / "stderr", "wb") as se:
        p = subprocess.Popen(cmd, stdout=so, stderr=se, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    err = (work / "stderr").read_text(errors="replace").strip().splitlines()
    peak_kib = int(hwm.read_text()) if hwm.exists() else usage.ru_maxrss
    row = {"model": f"{model} (.pt2)" if pt2 else model, "recipe": recipe, "rc": rc, "seconds": round(wall, 1),
           "peak_mib": round(peak_kib / 1024)}
    if rc == 0:
        rep = json.loads((out / "report.json").read_text())
        b, c, r = rep["baseline"], rep["compressed"], rep["ratios"]
        row.update(outcome="done", acc_before=b.get("accuracy"), acc_after=c.get("accuracy"),
                   macs=r.get("macs"), size=r.get("size_bytes"), b1=r.get("latency_ms_p50_b1"),
                   bN=r.get("latency_ms_p50_bN"),
                   partial=[v for v in rep.get("verdicts", []) if v.startswith("partial:")],
                   over_drop=any("MORE than" in v for v in rep.get("verdicts", [])))
    else:
        line = next((x for x in err if x.startswith("slimkit: error:")), None)
        row.update(outcome="refused" if rc == 2 and line else "CRASH",
                   message=(line or (err[-1] if err else f"exit {rc}"))[:220])
    return row


def fmt(row: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    def x(v):
        return "-" if v is None else f"{v:.2f}x"

    if row["outcome"] != "done":
        note = row["message"].replace("slimkit: error: ", "").replace("|", "/")
        return (f"| {row['model']} | {row['recipe']} | {row['outcome']} | - | - | - | - | - | {row['seconds']:.0f} s"
                f" / {row['peak_mib']} MiB | {note} |")
    note = "; ".join(p.replace("partial: ", "").replace("|", "/") for p in row["partial"])
    verdict = "done, drop beyond max_drop" if row["over_drop"] else "done"
    return (f"| {row['model']} | {row['recipe']} | {verdict} | {pct(row['acc_before'])} -> {pct(row['acc_after'])} | "
            f"{x(row['macs'])} | {x(row['size'])} | {x(row['b1'])} | {x(row['bN'])} | {row['seconds']:.0f} s / "
            f"{row['peak_mib']} MiB | {note[:200]} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(FOREIGN))
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--runs", type=int, default=20, help="timed runs per latency figure")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--pt2", action="store_true", help="give each model as a torch.export .pt2 file (saved first)")
    a = ap.parse_args()
    rows = []
    print("| model | recipe | outcome | accuracy (ORT, test) | MACs | size | ORT b1 | ORT bN | tool cost | "
          "layers left alone / message |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as td:
        for m in a.models.split(","):
            for r in a.recipes.split(","):
                row = run_cell(m, r, Path(td), a.runs, a.pt2)
                rows.append(row)
                print(fmt(row), flush=True)
    done = sum(r["outcome"] == "done" for r in rows)
    crashes = sum(r["outcome"] == "CRASH" for r in rows)
    print(f"\n{done}/{len(rows)} done, {len(rows) - done - crashes} refused with a message, {crashes} crashed")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
