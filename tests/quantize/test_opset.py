"""Raising an ONNX model's opset converts the nodes whose signature changed (ReduceMean's axes became an input in
opset 18): the mixed-precision packer raises 17 -> 21, and a CNN with a global average pool must still load."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from slimkit.quantize.onnx_passes import raise_opset


def test_reduce_mean_axes_become_an_input():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0, name="gap")
    m = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    data = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": data})[0]
    raise_opset(m, 21)
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version == 21 and not m.graph.node[0].attribute[0].name == "axes"
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": data})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    np.testing.assert_allclose(got, data.mean((2, 3)), rtol=1e-5)
