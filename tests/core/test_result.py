"""The technique-result contract (core.result): what the runner, exporters and meters read, in one place."""
import torch.nn as nn

from slimkit.core.result import Compressed, finalized, is_simulated, lowers, own_export, own_metrics


class _Masked(Compressed):
    def __init__(self):
        super().__init__()
        self.model = nn.Linear(2, 2)

    def slimkit_finalize(self):
        return self.model


class _Quantized(Compressed):
    slimkit_simulated = True

    def __init__(self):
        super().__init__()
        self.exported = []

    @property
    def slimkit_metrics(self):
        return {"quantization": {"bits": 8}}

    def slimkit_export(self, data, path):
        self.exported.append(path)


def test_plain_models_and_wrappers_are_read_through_one_contract():
    plain = nn.Linear(2, 2)
    assert finalized(plain) is plain and not is_simulated(plain) and own_metrics(plain) == {}
    assert own_export(plain) is None and not lowers(plain)
    plain.slimkit_export = lambda *a: None  # a stray attribute on a user's model is not the contract
    assert own_export(plain) is None
    m = _Masked()
    assert isinstance(finalized(m), nn.Linear) and own_export(m) is None and not is_simulated(m)
    q = _Quantized()
    assert finalized(q) is q and is_simulated(q) and own_metrics(q) == {"quantization": {"bits": 8}}
    own_export(q)(None, "f.onnx")
    assert q.exported == ["f.onnx"] and not lowers(q)


def test_every_wrapping_technique_result_is_a_compressed():
    from slimkit.prune.cluster import ClusteredModel
    from slimkit.prune.unstructured import PrunedModel
    from slimkit.quantize.dynamic import DynQuantModel
    from slimkit.quantize.int4 import Int4Model
    from slimkit.quantize.static import QuantizedModel

    for cls in (PrunedModel, ClusteredModel, DynQuantModel, Int4Model, QuantizedModel):
        assert issubclass(cls, Compressed), cls
    assert QuantizedModel.slimkit_lower is not None and DynQuantModel.slimkit_lower is None
