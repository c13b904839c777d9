"""Helpers shared by the bench scripts (run as ``python bench/<name>.py``, so this imports as ``_common``)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from slimkit.evaluate import Candidate, compare
from slimkit.export import export_onnx


def side_by_side(models: dict, data, threads: int, batch: int = 360) -> dict:
    """Export every model to ONNX and time them all interleaved in one process (the first is the baseline)."""
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        cands = []
        for i, (lbl, m) in enumerate(models.items()):
            export_onnx(m, data, td / f"v{i}.onnx")
            cands.append(Candidate(lbl, m, td / f"v{i}.onnx"))
        return compare(cands, data, workdir=td / "w", threads=threads, batch=batch, runs=30)


def latency_cells(r: dict) -> str:
    """ORT b1 | ORT bN | PyTorch b1 | PyTorch bN ratios against the baseline, as Markdown cells."""
    keys = ("latency_ms_p50_b1", "latency_ms_p50_bN", "torch_latency_ms_p50_b1", "torch_latency_ms_p50_bN")
    return " | ".join(f"{r.get(k, 1.0):.2f}x" for k in keys)
