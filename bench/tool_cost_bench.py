"""What static int8 PTQ costs the user: wall time and peak memory of the quantizing process, slimkit beside ONNX
Runtime's own quantizer, on the same model, the same calibration samples and the same machine, one child process
per cell (so the import of torch, the model load and the ONNX writing count, as they do for a user).

- ``slimkit int8-static``: the recipe's technique (auto calibrator per tensor, bias correction, 7-bit weights on
  AVX2 without VNNI) and its checked QDQ export (the tight parity check against the simulation included);
- ``slimkit minmax``: the same without the per-tensor calibrator search and bias correction;
- ``ORT quantize_static``: QDQ, per-channel weights, ``reduce_range`` (the issue's peer configuration), on the fp32
  ONNX file, with a reader over the same calibration samples.

The accuracy column is each file's, in ONNX Runtime, on the held-out test split.

    python bench/tool_cost_bench.py [--models digits-cnn,mnist1d-cnn] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
kind, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "ort":
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    calib = np.load(sys.argv[4])
    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{calib["name"].item(): x[None]} for x in calib["x"]])
        def get_next(self):
            return next(self.it, None)
    quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
else:
    from slimkit.core import Context
    from slimkit.export.onnx import export_artifact
    from slimkit.load import resolve
    from slimkit.pipeline import Recipe
    from slimkit.quantize.static import int8_static
    import dataclasses
    lm, data = resolve(f"zoo:{model}")
    cfg = Recipe.load("int8-static").stages[0].techniques[0].config
    if kind == "minmax":
        cfg = dataclasses.replace(cfg, calibrator="minmax", bias_correction=False)
    export_artifact(int8_static(lm.model, cfg, Context(data=data)), data, out)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"hwm_kib": hwm}))
"""


def run_child(args: list[str]) -> dict:
    p = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = p.stdout.read()
    if p.wait() != 0:
        raise SystemExit(f"child {args[:2]} failed")
    inner = json.loads(out.decode().strip().splitlines()[-1])
    # the child's own high-water mark (VmHWM, reset by exec): wait4's ru_maxrss would count the pages the child
    # shared with this parent between fork and exec (torch is loaded here)
    return {"peak_mib": inner["hwm_kib"] / 1024}


def main() -> None:
    import time

    import numpy as np

    from slimkit.export import ort_run, ort_session
    from slimkit.export.onnx import export_onnx
    from slimkit.load import resolve

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits-cnn,mnist1d-cnn")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print("| model | quantizer | wall (s), median of runs | peak RSS (MiB) | accuracy (ORT, test) |")
    print("|---|---|---|---|---|")
    for name in a.models.split(","):
        lm, data = resolve(f"zoo:{name}")
        with tempfile.TemporaryDirectory() as td:
            td = Path(td)
            export_onnx(lm.model, data, td / "fp32.onnx")
            n = min(256, len(data.calib))  # the slimkit recipe's calibration_samples
            np.savez(td / "calib.npz", x=data.calib.inputs[0][:n].numpy(), name=np.array(data.input_names[0]))
            cells = {"slimkit int8-static": ["slimkit", name], "slimkit minmax, no bias correction": ["minmax", name],
                     "ORT quantize_static (per-channel, reduce_range)": ["ort", str(td / "fp32.onnx")]}
            for label, args in cells.items():
                runs = []
                for r in range(a.repeats):
                    out = td / f"{args[0]}-{r}.onnx"
                    t0 = time.perf_counter()
                    res = run_child([*args, str(out), str(td / "calib.npz")])
                    res["wall_s"] = time.perf_counter() - t0
                    runs.append(res)
                sess = ort_session(out)
                got = np.concatenate([ort_run(sess, x) for x, _ in data.test.batches(256)])
                acc = float((got.argmax(1) == data.test.targets.numpy()).mean())
                wall = statistics.median(r["wall_s"] for r in runs)
                peak = statistics.median(r["peak_mib"] for r in runs)
                print(f"| {name} | {label} | {wall:.1f} | {peak:.0f} | {100 * acc:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
