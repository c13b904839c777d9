import numpy as np
import pytest
import torch

from slimkit.zoo import load_zoo_model
from slimkit.zoo.train import predict


def _acc(model, data):
    return float((predict(model, data.test).argmax(1) == data.test.targets).float().mean())


def test_digits_split_is_fixed_and_stratified(digits):
    assert len(digits.train) == 1437 and len(digits.test) == 360
    counts = torch.bincount(digits.test.targets, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert digits.input_shapes() == [(1, 16, 16)]


def test_digits_cnn_floor(digits_cnn, digits):
    assert _acc(digits_cnn, digits) >= 0.99


def test_digits_mlp_floor(digits_mlp, digits):
    assert _acc(digits_mlp, digits) >= 0.97


def test_mnist1d_cnn_floor(mnist1d_cnn, mnist1d):
    assert len(mnist1d.train) == 4000 and len(mnist1d.test) == 1000
    assert _acc(mnist1d_cnn, mnist1d) >= 0.90


def test_cache_reused_and_corrupt_cache_retrained(digits, digits_mlp, tmp_path, monkeypatch):
    from slimkit.core.io import cache_dir

    files = sorted((cache_dir() / "zoo").glob("digits-mlp-*.pt"))
    assert files, "trained weights were cached"
    again = load_zoo_model("digits-mlp", digits)
    for a, b in zip(again.state_dict().values(), digits_mlp.state_dict().values()):
        assert torch.equal(a, b)
    files[0].write_bytes(b"not a torch file")
    retrained = load_zoo_model("digits-mlp", digits)  # deterministic: same weights again
    assert _acc(retrained, digits) >= 0.97
    assert files[0].stat().st_size > 1000


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm, sentences):
    from sentence_transformers import SentenceTransformer

    from slimkit.zoo.sentences import SENTENCES

    st = SentenceTransformer(str(minilm.source_dir), device="cpu")
    ref = st.encode(list(SENTENCES[:64]), convert_to_numpy=True, normalize_embeddings=False)
    with torch.no_grad():
        ours = minilm(*sentences.test.slice(0, 64).inputs).numpy()
    cos = np.sum(ref * ours, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(ours, axis=1))
    assert cos.min() >= 0.9999


def test_mnist1d_lstm_floor_and_int8_lstm_keeps_it(mnist1d, tmp_path):
    from slimkit.core import Context
    from slimkit.export import ort_run, ort_session
    from slimkit.quantize import DynamicQuantConfig, int8_dynamic

    model = load_zoo_model("mnist1d-lstm", mnist1d)
    acc = _acc(model, mnist1d)
    assert acc >= 0.85
    qm = int8_dynamic(model, DynamicQuantConfig(), Context(data=mnist1d))
    out = tmp_path / "lstm-int8.onnx"
    qm.slimkit_export(mnist1d, out)
    assert "DynamicQuantizeLSTM" in qm.info["ort_int8_kernels"]
    got = ort_run(ort_session(out), mnist1d.test.inputs).argmax(1)
    assert float((got == mnist1d.test.targets.numpy()).mean()) >= acc - 0.01


@pytest.mark.slow
def test_zoo_training_repeats_bit_for_bit_whatever_the_process_thread_count(tmp_path, monkeypatch):
    # a CNN: its convolution gradients are reduced per thread (without the pinned count, 1 and 3 threads gave
    # different weights when this test was written); an MLP's are not
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    old = torch.get_num_threads()
    states = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            states.append(load_zoo_model("digits-cnn", retrain=True).state_dict())
            assert torch.get_num_threads() == n  # training restores the caller's setting
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_mnist1d_is_generated_once_and_a_damaged_copy_is_made_again(tmp_path, monkeypatch):
    from mnist1d.data import get_dataset_args, make_dataset

    from slimkit.zoo.data import mnist1d

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    first = mnist1d()
    cached = list((tmp_path / "data").glob("mnist1d-*.npz"))
    assert len(cached) == 1
    ref = make_dataset(get_dataset_args())  # the package's own generation: the cache must not change a value
    assert np.array_equal(first.train.inputs[0].squeeze(1).numpy(), np.asarray(ref["x"], dtype=np.float32))
    assert np.array_equal(first.test.targets.numpy(), np.asarray(ref["y_test"]))
    cached[0].write_bytes(b"not an npz")
    again = mnist1d()
    assert torch.equal(again.train.inputs[0], first.train.inputs[0]) and torch.equal(again.test.targets,
                                                                                     first.test.targets)
    with np.load(cached[0], allow_pickle=False) as z:  # rewritten whole
        assert z["x"].shape == ref["x"].shape


def test_cached_digits_are_scikit_learns(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    from slimkit.zoo.data import digits

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    made, cached = digits(8), digits(8)  # the second from the cache
    assert list((tmp_path / "data").glob("digits-*.npz"))
    ref = torch.tensor(load_digits().images, dtype=torch.float32) / 16.0 * 2 - 1
    for d in (made, cached):
        both = torch.cat([d.train.inputs[0], d.test.inputs[0]]).squeeze(1)
        assert both.shape == ref.shape and torch.equal(both.sort(0).values, ref.sort(0).values)
        assert torch.equal(d.test.inputs[0], made.test.inputs[0]) and torch.equal(d.train.targets, made.train.targets)
