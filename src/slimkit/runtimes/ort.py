"""ONNX Runtime (CPU execution provider): slimkit's ONNX export and parity check."""
from __future__ import annotations

from pathlib import Path

from .base import Artifact, Runtime, Session, register_runtime


class _OrtSession(Session):
    def __init__(self, path: Path, threads: int):
        from ..export.onnx import ort_session

        self.sess = ort_session(path, threads=threads)

    def run(self, inputs):
        from ..export.onnx import ort_run

        return ort_run(self.sess, inputs)

    def runner(self, inputs):
        names = [i.name for i in self.sess.get_inputs()]
        feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}
        return lambda: self.sess.run(None, feed)


def _export(model, data, path, precision: str = "fp32", batch=None) -> Artifact:
    from ..export.onnx import export_artifact

    export_artifact(model, data, Path(path))
    return Artifact(Path(path), "ort", precision, quantizer="slimkit" if precision == "int8" else "")


def _ops(art: Artifact) -> list[str]:
    import onnx

    return sorted({n.op_type for n in onnx.load(str(art.path), load_external_data=False).graph.node})


def _version() -> str:
    import onnxruntime

    return onnxruntime.__version__


register_runtime(Runtime("ort", ".onnx", "ONNX Runtime, CPU execution provider", "onnxruntime",
                         "pip install onnxruntime", _export, lambda a, threads=1: _OrtSession(a.path, threads), _ops,
                         _version, precisions=("fp32",)))  # ORT's int8 comes from slimkit's quantize techniques
