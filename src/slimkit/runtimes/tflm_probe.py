"""One TFLM arena probe, run as its own process: ``python tflm_probe.py MODEL.tflite ARENA_BYTES SAMPLE.npy``.
Exit 0: the model allocated and ran in that arena; 3: it did not. TFLM's Python interpreter can crash (SIGSEGV)
on some too-small arenas instead of failing cleanly, so the binary search never probes in slimkit's own process."""
import os
import sys

import numpy as np


def main() -> int:
    path, arena, sample = sys.argv[1], int(sys.argv[2]), np.load(sys.argv[3])
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # TFLM reports each failed allocation on stderr
    from tflite_micro.python.tflite_micro import runtime

    try:
        it = runtime.Interpreter.from_file(path, arena_size=arena)
        it.set_input(sample, 0)
        it.invoke()
    except RuntimeError:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
