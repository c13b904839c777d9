import numpy as np
import onnx
import pytest
import torch

from slimkit.core.errors import ExportError
from slimkit.export import check_parity, export_onnx, ort_run, ort_session


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp", "mnist1d_cnn"])
def test_zoo_export_parity_and_dynamic_batch(name, request, tmp_path):
    model = request.getfixturevalue(name)
    data = request.getfixturevalue("mnist1d" if name.startswith("mnist1d") else "digits")
    out = tmp_path / f"{name}.onnx"
    p = export_onnx(model, data, out)
    assert p.ok and p.max_abs_err < 1e-3 and p.cosine > 0.9999 and p.agree_top1 == 1.0
    m = onnx.load(str(out))
    assert m.opset_import[0].version >= 17
    sess = ort_session(out)
    for n in (1, 7, 100):  # dynamic batch
        x = data.test.slice(0, n).inputs
        got = ort_run(sess, x)
        ref = model(*x).detach().numpy()
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_minilm_export_parity(minilm, sentences, tmp_path):
    p = export_onnx(minilm, sentences, tmp_path / "minilm.onnx", parity_samples=32)
    assert p.ok and p.cosine > 0.9999
    # dynamic sequence length: a shorter padded batch still runs and matches
    sess = ort_session(tmp_path / "minilm.onnx")
    ids, mask = sentences.test.slice(0, 4).inputs
    L = int(mask.sum(1).max())
    got = ort_run(sess, (ids[:, :L], mask[:, :L]))
    ref = minilm(ids[:, :L], mask[:, :L]).detach().numpy()
    assert np.abs(got - ref).max() < 1e-4


def test_failed_parity_writes_nothing(digits_cnn, digits, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="parity check failed"):
        export_onnx(digits_cnn, digits, out, atol=0.0, min_cosine=1.01)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_parity_detects_a_different_model(digits_cnn, digits, tmp_path):
    import copy

    other = copy.deepcopy(digits_cnn)
    with torch.no_grad():
        other.classifier[-1].weight.mul_(-1)
    export_onnx(other, digits, tmp_path / "other.onnx")
    p = check_parity(digits_cnn, str(tmp_path / "other.onnx"), digits)
    assert not p.ok


def test_export_rejects_old_opset(digits_cnn, digits, tmp_path):
    with pytest.raises(ExportError, match="opset 13 is too old"):
        export_onnx(digits_cnn, digits, tmp_path / "x.onnx", opset=13)
