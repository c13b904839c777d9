"""Every built-in recipe on a zoo model, each report page checked in headless Chromium at 1400 and 420 px, then one
``slimkit compare`` page over all of them. Prints a Markdown table (for docs/BENCHMARKS.md) and keeps the
screenshots.

    python bench/report_pages.py [--model zoo:digits-cnn] [--out bench-out/report-pages] [--only demo,int8-static]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

RECIPES = ["demo", "int8-static", "int8-dynamic", "qat-4bit", "mixed-precision", "mixed-precision-size",
           "int4-weights", "prune-unstructured-90", "prune-gradual-90", "prune-structured-50", "deep-compression",
           "lowrank-auto", "dsconv", "distill-student", "profile-only"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="zoo:digits-cnn")
    ap.add_argument("--out", default="bench-out/report-pages")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipes = [r for r in RECIPES if not args.only or r in args.only.split(",")]
    runs = []
    for r in recipes:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "slimkit.cli", "-q", "compress", args.model, "--recipe", r,
                            "--out", str(out / r)], capture_output=True, text=True)
        dt = time.perf_counter() - t0
        err = (p.stderr.strip().splitlines() or [""])[-1]
        runs.append((r, p.returncode, dt, err))
        print(f"{r}: exit {p.returncode} in {dt:.0f} s {err if p.returncode else ''}", file=sys.stderr, flush=True)

    from playwright.sync_api import sync_playwright

    from slimkit.report.browser import COMPARE_SECTIONS, launch, md_table_titles, problems, render

    rows = []
    with sync_playwright() as pw:
        b = launch(pw)
        for r, rc, dt, err in runs:
            if rc != 0:
                rows.append(f"| {r} | refused/failed (exit {rc}): {err[:90]} | {dt:.0f} | | | |")
                continue
            seen = render(b, out / r / "report.html", out / "shots", r)
            md = (out / r / "report.md").read_text()
            n_md = len(md_table_titles(md))
            bad = problems(seen, md)
            plots = ", ".join(p["name"] for p in seen[0]["plots"])
            rows.append(f"| {r} | {'ok' if not bad else '; '.join(bad)[:120]} | {dt:.0f} | {plots} | "
                        f"{n_md} | {seen[0]['overflow']} / {seen[1]['overflow']} |")
        ok = [r for r, rc, _, _ in runs if rc == 0]
        if len(ok) >= 2:
            subprocess.run([sys.executable, "-m", "slimkit.cli", "-q", "compare", *[str(out / r) for r in ok],
                            "--out", str(out / "compare.html"), "--force"], check=True)
            seen = render(b, out / "compare.html", out / "shots", "compare")
            print(f"compare page over {len(ok)} runs: problems {problems(seen, sections=COMPARE_SECTIONS) or 'none'} (sections "
                  f"{seen[0]['sections']}), plots {[p['name'] for p in seen[0]['plots']]}")
        b.close()
    print(f"\n### {args.model}: every built-in recipe's report.html in headless Chromium (1400 px and 420 px)\n")
    print("| recipe | page check | run (s) | plots | technique tables | sideways overflow 1400/420 px |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
