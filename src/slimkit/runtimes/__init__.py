"""On-device runtimes, one module each, behind one registry: ``ort`` (ONNX Runtime), ``litert`` (LiteRT, the
TensorFlow Lite runtime of Android, XNNPACK delegate), ``litert-builtin`` (LiteRT's reference kernels) and ``tflm``
(TensorFlow Lite Micro). Each knows how to export a model to its artifact, open it, run a batch (handling int8
input/output quantization for the caller), and list its operators. The heavy packages are optional extras,
imported only when a runtime is used; a missing one is a one-line error naming the ``pip install`` to run."""
from __future__ import annotations

from .base import Artifact, Runtime, Session, get_runtime, list_runtimes, parse_runtimes

__all__ = ["Artifact", "Runtime", "Session", "get_runtime", "list_runtimes", "parse_runtimes"]
