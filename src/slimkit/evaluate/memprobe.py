"""Child-process probe: peak resident memory of one inference in a runtime.

Run as ``python memprobe.py MODEL INPUTS.npz THREADS [RUNTIME]`` (as a file, so that the slimkit package is not
imported and does not count); RUNTIME is ``ort`` (default), ``litert``, ``litert-builtin`` or ``executorch`` (which imports torch: its
tensors are torch's). Prints one JSON line with ``rss_base`` (after the runtime's imports) and ``rss_peak`` (bytes).
LiteRT artifacts have a fixed input shape and maybe int8 inputs: they run on zeros of their own shape and type (the
memory an inference takes does not depend on the values).
"""
from __future__ import annotations

import json
import resource
import sys


def _hwm() -> int:
    """Peak RSS of this process image (VmHWM). ru_maxrss would be wrong here:
    Linux carries it over from the parent across fork and exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _litert(model: str, arrays: dict, threads: int, builtin: bool = False):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    base = _hwm()
    kw = {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES} if builtin else {}
    it = Interpreter(model_path=model, num_threads=threads, **kw)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    for _ in range(3):
        it.invoke()
    return base


def _executorch(model: str, arrays: dict, threads: int):
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    base = _hwm()
    portable_lib._unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(model).load_method("forward")
    args = [torch.from_numpy(arrays[f"arr_{k}"]) for k in range(len(arrays))]
    for _ in range(3):
        method.execute(args)
    return base


def main() -> None:
    model, inputs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    runtime = sys.argv[4] if len(sys.argv) > 4 else "ort"
    import numpy as np

    arrays = dict(np.load(inputs, allow_pickle=False))
    if runtime != "ort":
        base = (_executorch(model, arrays, threads) if runtime == "executorch"
                else _litert(model, arrays, threads, builtin=runtime == "litert-builtin"))
        print(json.dumps({"rss_base": base, "rss_peak": _hwm()}))
        return
    import onnxruntime as ort

    base = _hwm()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feed = {n: arrays[f"arr_{k}"] for k, n in enumerate(names)}
    for _ in range(3):
        sess.run(None, feed)
    peak = _hwm()
    print(json.dumps({"rss_base": base, "rss_peak": peak}))


if __name__ == "__main__":
    main()
