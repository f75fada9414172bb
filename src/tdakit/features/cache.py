"""Content-keyed caching of a method's train features in a :class:`FeatureStore`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tdakit.features.store import FeatureStore, cache_key
from tdakit.inputs import fingerprint_tensors

if TYPE_CHECKING:
    from tdakit.methods.base import FeatureMethod


def feature_store_for(method: FeatureMethod, X: torch.Tensor, y: torch.Tensor) -> FeatureStore:
    """Open (or create) the store keyed by model, data and method configuration."""
    assert method.cache_dir is not None and method.task is not None
    task = method.task
    meta = {
        "model": task.fingerprint(),
        "params": list(task.param_names),
        "loss": task.loss_name,
        "data": fingerprint_tensors(X, y),
        "config": method.cache_config(),
    }
    dim = method._features(X[:1], y[:1], "train").shape[1]
    dtype = str(task.dtype).removeprefix("torch.")
    key = cache_key(**meta, dim=dim, dtype=dtype)
    path = method.cache_dir / f"{type(method).__name__.lower()}-{key}"
    return FeatureStore.open(path, len(X), dim, dtype=dtype, meta=meta)


def cached_features(method: FeatureMethod, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Train features from the store, computing only the chunks that are missing."""
    store = feature_store_for(method, X, y)
    store.fill(lambda a, b: method._features(X[a:b], y[a:b], "train"), progress=method.progress)
    task = method.task
    assert task is not None
    return store.as_tensor(device=task.device, dtype=task.dtype)
