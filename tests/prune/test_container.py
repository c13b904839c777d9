import copy

import pytest
import torch

from slimkit.core import Context
from slimkit.core.errors import LoadError
from slimkit.prune import MagnitudePruneConfig, load_slim, magnitude_prune, save_slim


def test_round_trip_is_bit_exact_and_smaller_for_sparse(digits_cnn, digits, tmp_path):
    pruned = magnitude_prune(digits_cnn, MagnitudePruneConfig(sparsity=0.9), Context(data=digits)).slimkit_finalize()
    dense = save_slim(digits_cnn, tmp_path / "dense.slim")
    sparse = save_slim(pruned, tmp_path / "sparse.slim")
    assert sparse["encodings"].get("bitmask", 0) + sparse["encodings"].get("gaps", 0) >= 4  # the 4 weight tensors
    assert sparse["file_bytes"] < 0.2 * dense["raw_bytes"]
    back = load_slim(tmp_path / "sparse.slim", copy.deepcopy(digits_cnn))
    got = back.state_dict()
    for k, a in pruned.state_dict().items():
        assert a.dtype == got[k].dtype and torch.equal(a, got[k]), k
    x = digits.test.inputs
    assert torch.equal(back(*x), pruned(*x))


def test_codebook_encoding_for_few_distinct_values(tmp_path):
    torch.manual_seed(0)
    centroids = torch.randn(16)
    state = {"w": centroids[torch.randint(0, 16, (256, 256))], "b": torch.randn(256)}
    info = save_slim(state, tmp_path / "c.slim")
    assert info["encodings"]["packed"] == 1
    assert info["file_bytes"] < 0.14 * info["raw_bytes"]  # 4-bit indices: 1/8 of fp32, plus the bias
    back = load_slim(tmp_path / "c.slim")
    assert torch.equal(back["w"], state["w"]) and torch.equal(back["b"], state["b"])
    # pruned and clustered: bitmask + 3-bit indices of the non-zeros only
    sparse = state["w"].clone().clamp_min(0.0)[:, :200]
    sparse[sparse < 0.5] = 0
    info = save_slim({"s": sparse}, tmp_path / "s.slim")
    assert set(info["encodings"]) <= {"sparse", "gaps_book"}
    assert torch.equal(load_slim(tmp_path / "s.slim")["s"], sparse)
    # very sparse: relative-index (gap) coding beats a bitmask; long runs need escape bytes
    g = torch.Generator().manual_seed(1)
    w = torch.zeros(400, 400)
    idx = torch.randperm(w.numel(), generator=g)[:800]
    w.view(-1)[idx] = torch.randn(800, generator=g)
    w.view(-1)[-1] = 1.5
    info = save_slim({"w": w}, tmp_path / "g.slim")
    assert info["encodings"] == {"gaps": 1}
    assert torch.equal(load_slim(tmp_path / "g.slim")["w"], w)


def test_corrupt_and_foreign_files(tmp_path, digits_mlp):
    save_slim(digits_mlp, tmp_path / "m.slim")
    data = (tmp_path / "m.slim").read_bytes()
    (tmp_path / "trunc.slim").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match="corrupt or truncated"):
        load_slim(tmp_path / "trunc.slim")
    (tmp_path / "x.slim").write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(LoadError, match="bad magic"):
        load_slim(tmp_path / "x.slim")
    with pytest.raises(LoadError, match="cannot read"):
        load_slim(tmp_path / "missing.slim")
