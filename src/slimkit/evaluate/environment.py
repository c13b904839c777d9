"""What the numbers were measured on: versions, CPU, threads."""
from __future__ import annotations

import os
import platform
import sys


def cpu_info() -> dict:
    name, flags = platform.processor() or "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"cpu": name or platform.machine(), "cores": os.cpu_count(), "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags, "avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags}


def environment(threads: int | None = None) -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torch

    from .. import __version__

    env = {"slimkit": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
           "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
           "numpy": numpy.__version__, **cpu_info()}
    if threads is not None:
        env["threads"] = threads
    return env
