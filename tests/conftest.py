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
