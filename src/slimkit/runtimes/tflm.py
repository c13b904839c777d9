"""TensorFlow Lite Micro (microcontrollers): the int8 ``.tflite`` that LiteRT's converter writes, run by TFLM's
Python interpreter (``pip install --pre tflite-micro``), with the two numbers firmware needs: the smallest tensor
arena the model runs in (found by binary search in the interpreter) and the flash footprint, checked against a
board's RAM and flash; and the C array firmware embeds (``model_data.cc``/``.h``, 16-byte aligned, the arena size as
a constant), written as TFLM users write it by hand."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import ConfigError
from ..core.io import atomic_write_text
from . import litert
from .base import Artifact, Runtime, Session, quiet, register_runtime

PIP = "pip install --pre 'tflite-micro' (or 'slimkit[mcu]')"


@dataclasses.dataclass(frozen=True)
class Board:
    name: str
    ram_bytes: int
    flash_bytes: int
    note: str = ""


#: board presets (RAM / flash a model may use; leave room for the application and the TFLM runtime itself)
BOARDS = {
    "cortex-m4": Board("cortex-m4", 256 * 1024, 1024 * 1024, "e.g. STM32F4 / nRF52840 class"),
    "cortex-m7": Board("cortex-m7", 512 * 1024, 2 * 1024 * 1024, "e.g. STM32F7 / i.MX RT class"),
    "esp32-s3": Board("esp32-s3", 512 * 1024, 8 * 1024 * 1024, "internal SRAM, 8 MB flash module"),
}

#: flash that TFLM's runtime and kernels take besides the model (a typical build with the ops a CNN needs)
RUNTIME_FLASH_BYTES = 100 * 1024


def board(spec: str) -> Board:
    """A preset name, or 'ram=256KB,flash=1MB'."""
    if spec in BOARDS:
        return BOARDS[spec]
    parts = dict(p.split("=", 1) for p in spec.split(",") if "=" in p)
    if not {"ram", "flash"} <= set(parts):
        raise ConfigError(f"unknown board {spec!r}; use one of {', '.join(BOARDS)} or ram=256KB,flash=1MB")
    return Board(spec, _bytes(parts["ram"]), _bytes(parts["flash"]))


def _bytes(s: str) -> int:
    s = s.strip().upper()
    for unit, mul in (("KB", 1024), ("MB", 1024 ** 2), ("K", 1024), ("M", 1024 ** 2), ("B", 1)):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mul)
    return int(s)


def _interp(path: Path, arena: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_file(str(path), arena_size=int(arena))


def _runs(path: Path, arena: int, sample: np.ndarray) -> bool:
    """Does the model allocate and run in ``arena`` bytes? Probed in a child process (see tflm_probe.py: TFLM's
    interpreter can crash on a too-small arena instead of failing)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".slimkit-tmp-tflm-") as d:
        npy = Path(d) / "sample.npy"
        np.save(npy, sample)
        r = subprocess.run([sys.executable, str(Path(__file__).with_name("tflm_probe.py")), str(path), str(int(arena)),
                            str(npy)], capture_output=True, timeout=120)
    return r.returncode == 0


def min_arena(path: Path, sample: np.ndarray, hi: int = 4 * 1024 * 1024, step: int = 16) -> int:
    """The smallest tensor arena (bytes, a multiple of ``step``) in which the model allocates and runs (about 18
    probes of a third of a second each)."""
    if not _runs(path, hi, sample):
        raise ConfigError(f"{path} does not run in TFLM even with a {hi // 1024} KB arena (an unsupported operator?)")
    lo = 0
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if _runs(path, mid, sample):
            hi = mid
        else:
            lo = mid
    return hi


class TFLMSession(Session):
    def __init__(self, art: Artifact, threads: int = 1, arena: Optional[int] = None):
        self.art = art
        self.arena = arena or 1024 * 1024
        with quiet(stdout=False):  # TFLM prints every failed allocation of the arena search
            self.it = _interp(art.path, self.arena)
        self.inp = self.it.get_input_details(0)
        self.out = self.it.get_output_details(0)

    def quantize_input(self, t) -> np.ndarray:
        a = t.detach().cpu().numpy()
        d = self.inp
        if np.dtype(d["dtype"]) in (np.int8, np.uint8):
            scale, zp = d["quantization_parameters"]["scales"][0], d["quantization_parameters"]["zero_points"][0]
            info = np.iinfo(d["dtype"])
            return np.clip(np.round(a / scale) + zp, info.min, info.max).astype(d["dtype"])
        return a.astype(d["dtype"])

    def _dq(self, y: np.ndarray) -> np.ndarray:
        d = self.out
        if np.dtype(d["dtype"]) in (np.int8, np.uint8):
            scale, zp = d["quantization_parameters"]["scales"][0], d["quantization_parameters"]["zero_points"][0]
            return (y.astype(np.float32) - zp) * scale
        return y.astype(np.float32)

    def run(self, inputs):
        x = inputs[0]
        outs = []
        for i in range(int(x.shape[0])):  # a microcontroller interpreter runs one sample at a time
            self.it.set_input(self.quantize_input(x[i:i + 1]), 0)
            self.it.invoke()
            outs.append(self._dq(self.it.get_output(0)))
        return np.concatenate(outs)

    def runner(self, inputs):
        a = self.quantize_input(inputs[0][:1])

        def run():
            self.it.set_input(a, 0)
            self.it.invoke()
        return run


def export(model, data, path, precision: str = "int8", batch: int = 1) -> Artifact:
    """TFLM runs integer models: the fully-int8 LiteRT artifact (batch 1)."""
    art = litert.export(model, data, path, "int8", 1)
    return Artifact(art.path, "tflm", "int8", 1, art.quantizer, art.parity)


def c_array(model_bytes: bytes, arena_bytes: int, name: str = "g_model") -> tuple[str, str]:
    """(model_data.h, model_data.cc): the model as a 16-byte aligned const array and the arena size constant."""
    h = (f"// {len(model_bytes)} bytes; generated by slimkit\n#pragma once\n#include <cstddef>\n#include <cstdint>\n\n"
         f"extern const unsigned char {name}[];\nextern const unsigned int {name}_len;\n"
         f"constexpr size_t kTensorArenaSize = {arena_bytes};  // measured minimum (bytes)\n")
    rows = [", ".join(f"0x{b:02x}" for b in model_bytes[i:i + 12]) for i in range(0, len(model_bytes), 12)]
    cc = (f'// generated by slimkit\n#include "model_data.h"\n\nalignas(16) const unsigned char {name}[] = {{\n  '
          + ",\n  ".join(rows) + f"\n}};\nconst unsigned int {name}_len = {len(model_bytes)};\n")
    return h, cc


def parse_c_array(cc: str) -> bytes:
    """The bytes back from model_data.cc (the round-trip check)."""
    body = cc[cc.index("{") + 1: cc.index("};")]
    return bytes(int(t, 16) for t in body.replace("\n", " ").split(",") if t.strip())


def write_firmware(art: Artifact, folder: Path, arena_bytes: int) -> tuple[Path, Path]:
    h, cc = c_array(Path(art.path).read_bytes(), arena_bytes)
    folder = Path(folder)
    atomic_write_text(folder / "model_data.h", h)
    atomic_write_text(folder / "model_data.cc", cc)
    return folder / "model_data.h", folder / "model_data.cc"


def fit(art: Artifact, arena_bytes: int, b: Board) -> dict:
    """Does it fit? RAM: the arena; flash: the model plus TFLM's runtime. Says what to shrink when it does not."""
    flash = Path(art.path).stat().st_size + RUNTIME_FLASH_BYTES
    ram_ok, flash_ok = arena_bytes <= b.ram_bytes, flash <= b.flash_bytes
    if ram_ok and flash_ok:
        verdict = (f"fits {b.name}: arena {arena_bytes / 1024:.1f} KB of {b.ram_bytes // 1024} KB RAM, flash "
                   f"{flash / 1024:.1f} KB (model + ~{RUNTIME_FLASH_BYTES // 1024} KB runtime) of "
                   f"{b.flash_bytes // 1024} KB")
    else:
        what = []
        if not ram_ok:
            what.append(f"RAM: the arena needs {arena_bytes / 1024:.1f} KB > {b.ram_bytes // 1024} KB; shrink the "
                        "activations (fewer channels: prune.structured; smaller input)")
        if not flash_ok:
            what.append(f"flash: {flash / 1024:.1f} KB > {b.flash_bytes // 1024} KB; shrink the weights "
                        "(prune.structured, factorize.lowrank, fewer parameters)")
        verdict = f"does NOT fit {b.name}: " + "; ".join(what)
    return {"board": b.name, "ram_bytes": b.ram_bytes, "flash_bytes": b.flash_bytes, "arena_bytes": arena_bytes,
            "flash_needed_bytes": flash, "fits": ram_ok and flash_ok, "verdict": verdict}


def version() -> str:
    from importlib.metadata import version as v

    return f"tflite-micro {v('tflite-micro')}"


register_runtime(Runtime("tflm", ".tflite", "TensorFlow Lite Micro (microcontrollers), int8, one sample at a time",
                         "tflite_micro", PIP, export, lambda a, threads=1: TFLMSession(a, threads), litert.ops, version,
                         batch_n=False, precisions=("int8",)))
