"""Is int8 faster than float for this layer, in this runtime, on this CPU? Each layer is exported alone (its own
input shape at batch 1, as the model feeds it) in float and in the runtime's int8, and the two files are timed
interleaved in one process. The answer differs by runtime and CPU: on an AVX2 CPU without VNNI, LiteRT's int8
XNNPACK kernels ran a LeNet's Linear layers in a quarter of their float time but its convolutions slower than float
(docs/BENCHMARKS.md), so "int8 everywhere" was slower than float there.

A layer timed alone carries the quantize/dequantize of its own input and output, which a chain of int8 layers does
not pay between its members; a layer left float between int8 ones adds two such boundaries, which this does not
charge (``SLOWER`` is the measured allowance); and a float layer inside a runtime's int8 program may run in another
form than alone (ExecuTorch's float first Conv1d of mnist1d-cnn: fast alone, slow inside the int8 program;
docs/BENCHMARKS.md). So the per-layer answer is then confirmed on whole programs (``program_times``): the int8
program with those layers float against the all-int8 one, timed interleaved in the runtime; the layers stay float
only if that program is the faster one."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..core.context import torch_threads
from ..core.data import DataBundle, DataSplit
from ..core.errors import ConfigError
from ..core.progress import track
from .latency import time_interleaved

#: the runtimes whose int8 of a float layer can be timed here: each exports a float model to int8 itself
#: (ONNX Runtime's int8 comes from slimkit's own quantizers; TFLM's Python interpreter does not time a board)
RUNTIMES = ("litert", "litert-builtin", "executorch")

#: a layer counts as slower in int8 when its int8 file alone takes at least this many times its float file's time:
#: alone, it also pays its own input quantize and output dequantize, and a layer left float between int8 ones adds
#: two such boundaries to the chain; at 1.0 the layers at 1.04x-1.05x (ExecuTorch's last Linear of the pruned
#: digits-cnn and of digits-mlp) stayed float and those files ran slower than all-int8 (0.52x vs 0.48x, 0.44x vs
#: 0.39x ORT fp32; docs/BENCHMARKS.md)
SLOWER = 1.1


def check_runtime(name: str) -> None:
    if name not in RUNTIMES:
        raise ConfigError(f"int8_where_faster={name!r}: layers can be timed in {', '.join(RUNTIMES)} (ONNX Runtime's "
                          "int8 is slimkit's own graph, and TFLM's Python interpreter does not time a "
                          "microcontroller); leave it empty to quantize every target layer")


def layer_inputs(model: nn.Module, names: Sequence[str], inputs: tuple, batch: int = 32) -> dict[str, torch.Tensor]:
    """The first positional input each named layer receives when ``model`` runs on ``inputs`` (a copy runs)."""
    m = copy.deepcopy(model).eval()
    seen: dict[str, list] = {n: [] for n in names}
    hooks = [m.get_submodule(n).register_forward_pre_hook(lambda mod, args, n=n: seen[n].append(args[0].detach()))
             for n in names]
    try:
        with torch.no_grad():
            for i in range(0, len(inputs[0]), batch):
                m(*(t[i:i + batch] for t in inputs))
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items() if v}


def int8_speedups(model: nn.Module, data: DataBundle, names: Sequence[str], runtime: str, *, samples: int = 32,
                  runs: int = 100, threads: int = 1) -> dict[str, dict]:
    """{layer: {"fp32_ms", "int8_ms", "ratio"}} at batch 1, each layer's float and int8 files timed interleaved
    (median of ``runs``); layer inputs come from the calibration split, never the test split."""
    from ..runtimes import get_runtime

    check_runtime(runtime)
    rt = get_runtime(runtime)
    rt.require()
    calib = data.calib
    n = min(samples, len(calib))
    feeds = layer_inputs(model, names, tuple(t[:n] for t in calib.inputs))
    runners, sessions = {}, []  # the sessions stay open until the timing is done
    with tempfile.TemporaryDirectory(prefix="slimkit-layer-speed-") as d, torch_threads(threads):
        for name in track(list(feeds), f"time layers in {runtime}"):
            x = feeds[name]
            layer = nn.Sequential(copy.deepcopy(model.get_submodule(name))).eval()
            bundle = DataBundle(name=f"layer {name}", task="embedding", train=None, test=DataSplit((x,)),
                                calib=DataSplit((x,)))
            for precision in ("fp32", "int8"):
                art = rt.export(layer, bundle, Path(d) / f"{len(runners)}{rt.suffix}", precision, 1)
                sess = rt.open(art, threads)
                sessions.append(sess)
                runners[(name, precision)] = sess.runner((x[:1],))
        times = time_interleaved(runners, runs=runs, desc=None)
    out = {}
    for name in feeds:
        f, q = (float(np.median(times[(name, p)])) for p in ("fp32", "int8"))
        out[name] = {"fp32_ms": round(f, 4), "int8_ms": round(q, 4), "ratio": round(q / max(f, 1e-9), 3)}
    return out


def program_times(models: dict, data: DataBundle, runtime: str, *, runs: int = 100, threads: int = 1) -> dict:
    """{label: median ms at batch 1} of whole int8 programs (slimkit's quantized models) in ``runtime``, timed
    interleaved on a calibration sample."""
    from ..runtimes import get_runtime

    check_runtime(runtime)
    rt = get_runtime(runtime)
    x = tuple(t[:1] for t in data.calib.inputs)
    runners, sessions = {}, []
    with tempfile.TemporaryDirectory(prefix="slimkit-program-speed-") as d, torch_threads(threads):
        for i, (label, m) in enumerate(models.items()):
            art = rt.export(m, data, Path(d) / f"p{i}{rt.suffix}", "int8", 1)
            sess = rt.open(art, threads)
            sessions.append(sess)
            runners[label] = sess.runner(x)
        times = time_interleaved(runners, runs=runs, desc=None)
    return {k: float(np.median(v)) for k, v in times.items()}
