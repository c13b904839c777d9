"""Energy estimate from counted operations and bytes moved.

No power meter exists on these machines, so slimkit *estimates* energy per
inference with the 45 nm per-operation energies of M. Horowitz, "Computing's
energy problem (and what we can do about it)", ISSCC 2014:
fp32 multiply 3.7 pJ + fp32 add 0.9 pJ -> 4.6 pJ per fp32 MAC;
int8 multiply 0.2 pJ + int32 add 0.1 pJ -> 0.3 pJ per int8 MAC;
DRAM access 640 pJ per 32-bit word -> 160 pJ per byte.
The model: every MAC at its precision, plus every weight byte read once from
DRAM per inference (batch 1). Activations are assumed to stay on chip.
It is a first-order estimate for comparing variants, not a measurement.
"""
from __future__ import annotations

PJ_PER_MAC = {"fp32": 4.6, "int8": 0.3}
PJ_PER_DRAM_BYTE = 640.0 / 4
SOURCE = "Horowitz, ISSCC 2014 (45 nm): fp32 MAC 4.6 pJ, int8 MAC 0.3 pJ, DRAM 160 pJ/byte"


def energy_mj(macs: int | None, weight_bytes: int, int8_fraction: float = 0.0) -> float | None:
    """Estimated energy of one inference in millijoules."""
    if macs is None:
        return None
    f = min(max(int8_fraction, 0.0), 1.0)
    pj = macs * ((1 - f) * PJ_PER_MAC["fp32"] + f * PJ_PER_MAC["int8"]) + weight_bytes * PJ_PER_DRAM_BYTE
    return pj * 1e-9
