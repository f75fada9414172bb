"""Methods keep train features in a content-keyed feature store and resume after a crash."""

from __future__ import annotations

import pytest
import torch

import tdakit as tda
from conftest import tiny_data, tiny_mlp
from tdakit.storage.store import FeatureStore


def test_cached_fit_equals_uncached_and_reuses_store(tmp_path, monkeypatch) -> None:
    model = tiny_mlp()
    X, y = tiny_data(n=50)
    task = tda.Task(model)
    ref = tda.GradDot(task).fit((X, y)).scores((X[:4], y[:4]))
    first = tda.GradDot(task, cache_dir=tmp_path).fit((X, y))
    assert torch.allclose(first.scores((X[:4], y[:4])), ref, rtol=1e-12)
    stores = list(tmp_path.iterdir())
    assert len(stores) == 1 and FeatureStore.load(stores[0]).is_complete()

    calls = []
    original = tda.GradDot._featurize

    def counting(self, batch, objective):
        calls.append((objective, batch.stop - batch.start))
        return original(self, batch, objective)

    monkeypatch.setattr(tda.GradDot, "_featurize", counting)
    again = tda.GradDot(task, cache_dir=tmp_path).fit((X, y))
    assert calls == [("train", 1)]  # only the one-row probe for the feature dimension
    assert again.features_.storage == "store"
    assert torch.allclose(again.scores((X[:4], y[:4])), ref, rtol=1e-12)


def test_cache_key_follows_model_data_and_projection(tmp_path) -> None:
    X, y = tiny_data(n=20)
    tda.GradDot(tda.Task(tiny_mlp(seed=0)), cache_dir=tmp_path).fit((X, y))
    tda.GradDot(tda.Task(tiny_mlp(seed=1)), cache_dir=tmp_path).fit((X, y))
    tda.GradDot(tda.Task(tiny_mlp(seed=0)), cache_dir=tmp_path).fit((X[:19], y[:19]))
    tda.GradDot(tda.Task(tiny_mlp(seed=0)), projection=8, cache_dir=tmp_path).fit((X, y))
    tda.GradDot(tda.Task(tiny_mlp(seed=0)), cache_dir=tmp_path).fit((X, y))  # reused
    assert len(list(tmp_path.iterdir())) == 4


def test_interrupted_featurisation_resumes_to_identical_arrays(tmp_path, monkeypatch) -> None:
    import tdakit.storage.store as store_mod

    model = tiny_mlp()
    X, y = tiny_data(n=50)
    task = tda.Task(model)
    original_fill = store_mod.FeatureStore.fill

    def crashing_fill(self, fn, shard=None, progress=False):
        done = []

        def fn_crash(a, b):
            if len(done) == 1:
                raise KeyboardInterrupt("simulated crash")
            done.append(a)
            return fn(a, b)

        return original_fill(self, fn_crash, shard, progress)

    small_chunks = store_mod.FeatureStore.open.__func__

    def open_small(cls, path, n_rows, dim, **kw):
        return small_chunks(cls, path, n_rows, dim, **{**kw, "chunk_rows": 16})

    monkeypatch.setattr(store_mod.FeatureStore, "open", classmethod(open_small))
    monkeypatch.setattr(store_mod.FeatureStore, "fill", crashing_fill)
    with pytest.raises(KeyboardInterrupt):
        tda.GradDot(task, cache_dir=tmp_path).fit((X, y))
    (path,) = tmp_path.iterdir()
    store = FeatureStore.load(path)
    assert not store.is_complete() and store.missing_chunks() == [1, 2, 3]
    with pytest.raises(tda.TdakitError, match="missing"):
        store.read()

    monkeypatch.setattr(store_mod.FeatureStore, "fill", original_fill)
    resumed = tda.GradDot(task, cache_dir=tmp_path).fit((X, y)).features_.rows(0, len(X))
    assert store.is_complete()
    other = tda.GradDot(task, cache_dir=tmp_path / "other").fit((X, y))
    uninterrupted = other.features_.rows(0, len(X))
    assert torch.equal(resumed, uninterrupted)  # bit-identical to a run that never crashed
    fresh = tda.GradDot(task).fit((X, y)).features_.T
    assert torch.allclose(resumed, fresh, rtol=1e-12)  # same up to batch-size rounding


def _ce(o, t):
    return torch.nn.functional.cross_entropy(o, t, reduction="none")


def test_cache_keys_cover_loss_code_and_the_forward(tmp_path):
    """Two lambda losses, or the same parameters under another forward (ReLU -> Tanh),
    never share a cache entry."""
    from torch import nn

    X, y = tiny_data()
    base = tiny_mlp()
    tanh = nn.Sequential(base[0], nn.ReLU(), base[2])  # same parameter tensors
    losses = [lambda o, t: _ce(o, t), lambda o, t: 2 * _ce(o, t)]
    runs = {}
    for name, model, loss in (
        ("a", base, losses[0]),
        ("b", base, losses[1]),
        ("c", tanh, losses[0]),
    ):
        method = tda.GradDot(tda.Task(model, loss=loss), cache_dir=tmp_path)
        runs[name] = method.fit((X, y)).scores((X[:3], y[:3]))
    stores = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(stores) == 3
    assert not torch.allclose(runs["a"], runs["b"]) and not torch.allclose(runs["a"], runs["c"])


def test_models_with_zero_dim_tensors_fingerprint_and_cache(tmp_path):
    """BatchNorm's num_batches_tracked and scalar parameters are 0-dim tensors."""
    from torch import nn

    from tdakit.models import build_model

    X = torch.randn(12, 3, 8, 8)
    y = torch.randint(0, 4, (12,))
    model = build_model("resnet9", (3, 8, 8), 4, seed=0, width=4).eval()
    task = tda.Task(model)
    assert len(task.fingerprint()) == 16 and len(task.code_key()) == 16
    tracin = tda.TracIn(task, [model.state_dict()], 0.1, cache_dir=tmp_path)
    first = tracin.fit((X, y)).scores((X[:2], y[:2]))
    again = tda.TracIn(task, [model.state_dict()], 0.1, cache_dir=tmp_path).fit((X, y))
    assert torch.equal(first, again.scores((X[:2], y[:2])))

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.temperature = nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            return self.lin(x) / self.temperature

    assert len(tda.Task(Scaled()).fingerprint()) == 16
