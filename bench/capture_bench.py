"""torch.fx graph-mode vs torch.export layer-by-layer static int8, on the same models, side by side in one run.

slimkit quantizes a model through torch.fx where fx traces it and reaches every layer, and through its
torch.export capture otherwise (``StaticQuantConfig.graph = auto``). This bench forces each path on models both
can see (the zoo), so the choice rests on figures: accuracy on the test split in ONNX Runtime, latency ratios
against the fp32 file (interleaved in one process), and the tool's own time.

    python bench/capture_bench.py [--models digits-cnn,digits-mlp,mnist1d-cnn] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SLIMKIT_QUIET", "1")

from slimkit.core import Context  # noqa: E402
from slimkit.evaluate import Candidate, compare  # noqa: E402
from slimkit.export import export_onnx  # noqa: E402
from slimkit.load import resolve  # noqa: E402
from slimkit.quantize import StaticQuantConfig, int8_static  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits-cnn,digits-mlp,mnist1d-cnn")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    print("| model | graph | accuracy (ORT, test) | ORT b1 vs fp32 | ORT bN vs fp32 | quantized layers | "
          "output quantizers | tool time |")
    print("|---|---|---|---|---|---|---|---|")
    for name in a.models.split(","):
        lm, data = resolve(f"zoo:{name}")
        model = lm.model
        with tempfile.TemporaryDirectory() as td:
            td = Path(td)
            export_onnx(model, data, td / "fp32.onnx")
            cands, rows = [Candidate("fp32", model, td / "fp32.onnx")], {}
            for graph in ("fx", "export"):
                t0 = time.perf_counter()
                qm = int8_static(model, StaticQuantConfig(graph=graph), Context(data=data, teacher=model))
                qm.slimkit_export(data, td / f"{graph}.onnx")
                rows[graph] = (time.perf_counter() - t0, qm.info)
                cands.append(Candidate(graph, qm, td / f"{graph}.onnx"))
            res = compare(cands, data, workdir=td / "w", threads=a.threads, runs=30, measure_memory=False)
        base = res["metrics"]["fp32"]["accuracy"]
        print(f"| {name} | fp32 | {100 * base:.2f}% | 1.00x | 1.00x | - | - | - |")
        for graph, (secs, info) in rows.items():
            m, r = res["metrics"][graph], res["ratios"][graph]
            outq = len(info.get("output_quantizers", [])) if graph == "export" else "after every layer"
            print(f"| {name} | {'torch.fx' if graph == 'fx' else 'torch.export'} | {100 * m['accuracy']:.2f}% | "
                  f"{r['latency_ms_p50_b1']:.2f}x | {r['latency_ms_p50_bN']:.2f}x | {len(info['quantized_layers'])} | "
                  f"{outq} | {secs:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
