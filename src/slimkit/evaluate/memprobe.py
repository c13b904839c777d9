"""Child-process probe: peak resident memory of an ONNX Runtime inference.

Run as ``python memprobe.py MODEL.onnx INPUTS.npz THREADS`` (as a file, so that the
slimkit package and torch are not imported and do not count);
prints one JSON line with ``rss_base`` (after imports) and ``rss_peak`` (bytes).
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


def main() -> None:
    model, inputs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import numpy as np
    import onnxruntime as ort

    arrays = dict(np.load(inputs, allow_pickle=False))
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
