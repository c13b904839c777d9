"""Layer-wise mixed precision ("hierarchical quantization"): measure each
layer's sensitivity (quantize it alone to low bits, or keep it alone in
float), then choose per layer fp32 / int8 / low-bit weights to meet a budget (``low_bits: 8``: fp32 or int8
only, i.e. the layers int8 hurts most stay float: what a transformer with outlier channels needs for an int8
LiteRT/ExecuTorch file, where 4-bit weights have no kernel):

- ``max_drop`` (default): the task metric may drop by at most this much;
- ``target_size``: the quantized layers' weights must fit in this share of
  their fp32 bytes (e.g. 0.2 = 5x smaller); layers are lowered greedily, least
  metric drop per byte saved first (search/greedy.py), and the drop that plan
  measures is reported.

Storage: 4-bit layers are packed two codes per byte (ONNX INT4, opset 21,
``pack_4bit``), so the file shrinks below int8; ONNX Runtime has no int4
convolution kernel, so the file re-expands those weights to int8 at each run
(cheap for big batches, measurable at batch 1: docs/BENCHMARKS.md);
``slimkit unpack`` (``quantize.onnx_passes.unpack_low_bit_weights``) does it once instead.
Codes of 3 or 2 bits use 4-bit containers.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch.nn as nn

from ..core.config import Tunable, check_range
from ..core.context import Context
from ..core.errors import ConfigError
from ..core.progress import track
from ..core.registry import register_technique
from ..evaluate.sensitivity import DropMeter, greedy_levels
from .static import (QuantizedModel, StaticQuantConfig, note_coverage, bias_correct, calibrate,
                     capture_for_quantization, keep_float_where_slower, prepare_static)


@dataclasses.dataclass
class MixedPrecisionConfig(StaticQuantConfig):
    #: the planner draws the size budget (weight bytes of the quantized layers against fp32; 4-bit weights
    #: everywhere give 0.125); the per-layer levels inside it come from mixed precision's own sensitivity search
    TUNABLE: ClassVar = {"target_size": Tunable(0.15, 0.3, step=0.05)}
    low_bits: int = 4
    max_drop: float = 0.005  # largest allowed drop of the task metric (accuracy or cosine), absolute
    min_sqnr_db: float = 25.0  # and the model output must keep this signal-to-quantization-noise ratio
    target_size: float = 0.0  # > 0: size budget instead, weight bytes of the quantized layers / their fp32 bytes
    eval_samples: int = 512
    calibrator: str = "mse"
    pack_4bit: bool = True

    def validate(self) -> None:
        super().validate()
        check_range("low_bits", self.low_bits, 2, 8)  # 8: int8 or fp32 per layer (no low-bit weights)
        check_range("max_drop", self.max_drop, 0, 1)
        check_range("target_size", self.target_size, 0, 1)
        check_range("min_sqnr_db", self.min_sqnr_db, 0, 100)
        if self.calibrator == "auto":
            raise ConfigError("mixed precision evaluates many plans: pick one calibrator (mse, percentile, ...) not auto")


@register_technique("quantize.mixed_precision", MixedPrecisionConfig, needs=("calibration_data", "train_data"),
                    summary="per-layer sensitivity, then fp32 / int8 / low-bit weights per layer within a metric-drop budget")
def mixed_precision(model: nn.Module, cfg: MixedPrecisionConfig, ctx: Context) -> QuantizedModel:
    """Sensitivity analysis + greedy bit allocation under ``max_drop``."""
    data = ctx.data
    cfg, speed, _ = keep_float_where_slower(model, cfg, ctx)  # layers slower in int8 in the runtime stay float
    # evaluation on held-in training samples (not the test split, which stays untouched for the report)
    meter = DropMeter(model, data, cfg.eval_samples, ctx.seed)
    # how the model is seen (torch.fx or a torch.export capture): once, shared by every plan built below
    cap = capture_for_quantization(model, cfg, data.example_inputs(2))

    calibrated: dict = {}  # activation ranges do not depend on the plan: calibrate once, reuse

    def build(plan: dict) -> QuantizedModel:
        c = dataclasses.replace(cfg, per_layer_bits=plan, bias_correction=False)
        qm = prepare_static(model, c, captured=cap)
        calibrate(qm, data, c, ranges=calibrated or None)
        if not calibrated:
            calibrated.update(qm.ranges())
        return qm

    def drop(plan: dict) -> tuple[float, float]:
        if layers and all(plan.get(n) == 32 for n in layers):
            return 0.0, float("inf")  # every layer kept in float: the float model itself
        return meter(build(plan))

    def within(d) -> bool:
        return d[0] <= cfg.max_drop and d[1] >= cfg.min_sqnr_db

    layers = build({}).info["quantized_layers"]
    params = {n: m.weight.numel() for n, m in (cap.model if cap else model).named_modules() if n in layers}
    rows = []
    lb = cfg.low_bits
    container = 4 if lb <= 4 and cfg.pack_4bit else 8  # bits each low-bit code takes on disk
    total = sum(params.values())
    if cfg.target_size and cfg.target_size * 32 < container:
        raise ConfigError(f"target_size={cfg.target_size} is below what {lb}-bit weights everywhere give "
                          f"({container / 32:.3f} of fp32 with {container}-bit storage); raise target_size")
    all_fp = {n: 32 for n in layers}
    for name in track(layers, "sensitivity"):
        d_fp, s_fp = drop({name: 32})
        row = {"layer": name, "params": params.get(name, 0)}
        if lb < 8:
            d_low, s_low = drop({name: lb})
            row.update({f"drop_int{lb}": round(d_low, 5), f"sqnr_db_int{lb}": round(s_low, 2)})
        row.update({"drop_int8_rest_this_fp32": round(d_fp, 5), "sqnr_db_int8_rest_this_fp32": round(s_fp, 2)})
        if cfg.target_size:  # the size search starts from fp32: each layer alone at int8 and at low bits
            row["drop_alone_int8"] = round(drop(dict(all_fp, **{name: 8}))[0], 5)
            row[f"drop_alone_int{lb}"] = row["drop_alone_int8"] if lb == 8 else \
                round(drop(dict(all_fp, **{name: lb}))[0], 5)
        rows.append(row)
    if cfg.target_size:
        # levels per layer: fp32 -> int8 -> low bits; saving in bytes against all-fp32
        cost = {r["layer"]: [(0.0, 0.0), (r["drop_alone_int8"], 3.0 * r["params"]),
                             (max(r["drop_alone_int8"], r[f"drop_alone_int{lb}"]), (4 - container / 8) * r["params"])]
                for r in rows}
        bits_of = (32, 8, lb)

        def saved(levels):
            return sum(cost[k][j][1] for k, j in levels.items())

        need = (1 - cfg.target_size) * 4.0 * total
        levels, _ = greedy_levels(cost, need, saved)
        # layers move in whole steps, so the plan may undershoot the budget: give the most sensitive ones their
        # bits back while the size still fits
        for k in sorted(levels, key=lambda k: -cost[k][levels[k]][0]):
            while levels[k] > 0 and saved(dict(levels, **{k: levels[k] - 1})) >= need:
                levels[k] -= 1
        plan = {k: bits_of[j] for k, j in levels.items() if bits_of[j] != 8}
        current = drop(plan)
    else:
        plan = {}
        current = drop(plan)
        # 1) if int8 everywhere is over budget, keep the layers whose float copy helps most in float
        for r in sorted(rows, key=lambda r: -r["sqnr_db_int8_rest_this_fp32"]):
            if within(current):
                break
            plan[r["layer"]] = 32
            current = drop(plan)
        # 2) lower the least sensitive layers first (highest SQNR when alone at low bits) while the budget holds
        for r in sorted(rows, key=lambda r: -r[f"sqnr_db_int{lb}"]) if lb < 8 else ():
            if r["layer"] in plan:
                continue
            trial = dict(plan, **{r["layer"]: lb})
            d = drop(trial)
            if within(d):
                plan, current = trial, d
    final = dataclasses.replace(cfg, per_layer_bits=plan)
    if all(plan.get(n) == 32 for n in layers):
        raise ConfigError(f"mixed precision kept every layer in float: quantizing any of {', '.join(layers[:4])} "
                          f"drops the metric by more than max_drop={cfg.max_drop}; raise max_drop")
    qm = prepare_static(model, final, captured=cap)
    note_coverage(qm, ctx, speed)
    calibrate(qm, data, final, ranges=calibrated)
    if cfg.bias_correction:
        bias_correct(qm, data, final)
    bits = {n: plan.get(n, 8) for n in layers}
    for r in rows:
        r["chosen_bits"] = bits[r["layer"]]
    eff = sum(params[n] * (32 if b == 32 else b) for n, b in bits.items()) / max(1, total)
    stored = sum(params[n] * (32 if b == 32 else container if b == lb else 8) for n, b in bits.items())
    budget = ({"target_size": cfg.target_size} if cfg.target_size
              else {"max_drop": cfg.max_drop, "min_sqnr_db": cfg.min_sqnr_db})
    qm.info.update(sensitivity=rows, precision_plan=bits, effective_weight_bits=round(eff, 2),
                   weight_bytes_vs_fp32=round(stored / max(1, 32 * total), 4),
                   measured_drop=round(current[0], 5), output_sqnr_db=round(current[1], 2), budget=budget)
    goal = (f"size <= {cfg.target_size:.3f} of fp32 (got {stored / max(1, 32 * total):.3f})" if cfg.target_size
            else f"drop <= {cfg.max_drop}, SQNR >= {cfg.min_sqnr_db} dB")
    storage = (f"{lb}-bit codes packed in INT4 (ONNX Runtime re-expands them to int8 at each run; unpack once with "
               "`slimkit unpack IN.onnx OUT.onnx`, or set pack_4bit: false)" if container == 4
               else f"{lb}-bit codes stored in int8 containers")
    lows = f"{sum(b == lb for b in bits.values())} layer(s) at {lb} bits, " if lb < 8 else ""
    ctx.note(f"mixed precision: {lows}{sum(b == 32 for b in bits.values())} in fp32, the rest int8; drop {current[0]:.4f}, output SQNR "
             f"{current[1]:.1f} dB on {len(meter.split)} training samples (budget: {goal}); {storage}")
    return qm
