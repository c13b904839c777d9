"""Quantization: schemes, calibrators, fake-quant modules, static and dynamic PTQ, exported to int8 ONNX."""
from .calibrate import CALIBRATORS, Observer
from .scheme import QScheme, compute_qparams, dequantize, fake_quant, quantize, sqnr_db
from .dynamic import DynamicQuantConfig, DynQuantModel, int8_dynamic
from .int4 import Int4Model, Int4WeightConfig, int4_weights
from .mixed import MixedPrecisionConfig, mixed_precision
from .static import QATConfig, QuantizedModel, StaticQuantConfig, int8_static, qat

__all__ = ["CALIBRATORS", "Observer", "QScheme", "compute_qparams", "dequantize", "fake_quant", "quantize", "sqnr_db",
           "QuantizedModel", "StaticQuantConfig", "int8_static", "DynamicQuantConfig", "DynQuantModel",
           "int8_dynamic", "QATConfig", "qat", "MixedPrecisionConfig", "mixed_precision",
           "Int4Model", "Int4WeightConfig", "int4_weights"]

from ..core.family import callable_family  # noqa: E402

callable_family(__name__)  # slimkit.quantize(model, config, data)
