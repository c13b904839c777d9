"""ONNX export and the parity check in ONNX Runtime."""
from .onnx import DEFAULT_OPSET, Parity, check_parity, export_onnx, ort_run, ort_session

__all__ = ["DEFAULT_OPSET", "Parity", "check_parity", "export_onnx", "ort_run", "ort_session"]
