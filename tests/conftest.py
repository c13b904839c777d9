import os
import tempfile

import pytest
import torch

# one trained-weights cache for the whole test session, independent of the user's cache
_CACHE = os.environ.get("SLIMKIT_TEST_CACHE") or tempfile.mkdtemp(prefix="slimkit-test-cache-")
os.environ["SLIMKIT_CACHE"] = _CACHE
os.environ["SLIMKIT_QUIET"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    from slimkit.zoo import zoo_data

    return zoo_data("digits")


@pytest.fixture(scope="session")
def mnist1d():
    from slimkit.zoo import zoo_data

    return zoo_data("mnist1d")


@pytest.fixture(scope="session")
def digits_cnn(digits):
    from slimkit.zoo import load_zoo_model

    return load_zoo_model("digits-cnn", digits)


@pytest.fixture(scope="session")
def digits_mlp(digits):
    from slimkit.zoo import load_zoo_model

    return load_zoo_model("digits-mlp", digits)


@pytest.fixture(scope="session")
def mnist1d_cnn(mnist1d):
    from slimkit.zoo import load_zoo_model

    return load_zoo_model("mnist1d-cnn", mnist1d)


@pytest.fixture(scope="session")
def minilm():
    from slimkit.zoo import load_zoo_model

    return load_zoo_model("minilm")


@pytest.fixture(scope="session")
def sentences(minilm):
    from slimkit.zoo import zoo_data

    return zoo_data("sentences", minilm)


@pytest.fixture(scope="session")
def minilm_ort_fidelity(minilm, sentences):
    """A function: fidelity (cos mean / min, NN top-1) of an exported MiniLM file, run in ONNX Runtime, to the
    float model's embeddings of the test sentences (computed once per session)."""
    import numpy as np
    import torch

    from slimkit.evaluate.metrics import fidelity
    from slimkit.export import ort_run, ort_session

    with torch.no_grad():
        ref = torch.cat([minilm(*x) for x, _ in sentences.test.batches(100)]).numpy()

    def measure(path) -> dict:
        sess = ort_session(path)
        return fidelity(np.concatenate([ort_run(sess, x) for x, _ in sentences.test.batches(100)]), ref)

    return measure
