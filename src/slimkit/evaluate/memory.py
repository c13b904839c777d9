"""Peak resident memory of an inference process, measured in a child process
so that the parent's own memory (training, other models) does not count."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.io import scratch


def peak_memory(path: str | os.PathLike, inputs: Sequence[torch.Tensor], threads: int = 1,
                     runtime: str = "ort") -> dict:
    """Run the model file on ``inputs`` in a fresh Python process; return ``peak_mem_bytes`` (whole process) and
    ``peak_mem_delta_bytes`` (above the process after importing numpy and the runtime). ``runtime``: ``ort`` for an
    ONNX file, ``litert`` for a .tflite (run on its own input shape), ``executorch`` for a .pte."""
    with scratch() as d:
        npz = Path(d) / "inputs.npz"
        np.savez(npz, *[t.detach().cpu().numpy() for t in inputs])
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        r = subprocess.run([sys.executable, str(Path(__file__).with_name("memprobe.py")), str(path), str(npz), str(threads),
                            runtime],
                           capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        return {"peak_mem_bytes": None, "peak_mem_delta_bytes": None,
                "peak_mem_error": (r.stderr.strip().splitlines() or ["unknown"])[-1][:200]}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {"peak_mem_bytes": int(out["rss_peak"]), "peak_mem_delta_bytes": int(out["rss_peak"] - out["rss_base"])}
