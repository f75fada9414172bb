"""Data sources: what users pass as data, read batch by batch in a fixed order.

A :class:`Source` wraps a tuple ``(X, y)`` (tensors, arrays, a dict of tensors, or any
sliceable sequence), a map-style ``Dataset`` or a ``DataLoader`` without shuffling. It
never copies the data: every pass yields the user's raw batches again, which the task's
batch hook turns into model inputs and targets. Example ``i`` is the ``i``-th example of
that order; scores are indexed by it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    Subset,
)

from tdakit.batching import Inputs, batch_len, digest
from tdakit.errors import DataError, require

DataLike = Any  # (X, y) tuple, map-style Dataset, DataLoader(shuffle=False), or a Source

__all__ = ["Batch", "DataLike", "Source", "as_source", "to_tensors"]


class Batch(NamedTuple):
    """Examples ``[start, stop)`` as model inputs and targets on the model's device."""

    start: int
    stop: int
    inputs: Inputs
    targets: torch.Tensor


def _array(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {k: _array(v) for k, v in value.items()}
    return value


class Source:
    """Examples in a fixed order, read in batches (see the module docstring)."""

    def __init__(self, name: str = "data") -> None:
        self.name = name

    def __len__(self) -> int:
        raise NotImplementedError

    def raw_batches(self, batch_size: int) -> Iterator[Any]:
        """The user's batches, in order (size ``batch_size`` where the source decides)."""
        raise NotImplementedError

    def subset(self, indices: torch.Tensor) -> Source:
        """The examples at ``indices`` (positions), in that order."""
        raise NotImplementedError

    def batches(self, task: Any, batch_size: int) -> Iterator[Batch]:
        """Checked ``(start, stop, inputs, targets)`` batches on ``task``'s device."""
        require(batch_size > 0, f"batch_size must be positive, got {batch_size}.")
        start, n = 0, len(self)
        for raw in self.raw_batches(batch_size):
            inputs, targets = task.split(raw)
            stop = start + batch_len(inputs)
            require(
                stop <= n,
                f"The {self.name} data yielded more examples than its length ({n}); the "
                "Dataset's __len__ must match what it yields.",
                DataError,
            )
            yield Batch(start, stop, inputs, targets)
            start = stop
        require(
            start == n,
            f"The {self.name} data yielded {start} examples but has length {n}: examples "
            "were dropped (drop_last=True or a sampler that skips examples?). Pass a "
            "DataLoader with a sequential sampler and drop_last=False, or the Dataset itself.",
            DataError,
        )

    def fingerprint(self, batch_size: int = 1024) -> str:
        """A short sha256 of every raw batch's contents (one pass over the data)."""
        h = None
        for raw in self.raw_batches(batch_size):
            h = digest(raw, h)
        return "empty" if h is None else h.hexdigest()[:16]


class TensorSource(Source):
    """``(X, y)``: tensors, numpy arrays, a dict of tensors, or sliceable sequences."""

    def __init__(self, X: Any, y: Any, name: str = "data") -> None:
        super().__init__(name)
        self.X, self.y = _array(X), _array(y)
        n = _length(self.X, f"{name} X")
        require(n > 0, f"The {name} set is empty: it needs at least one example.", DataError)
        ny = _length(self.y, f"{name} y")
        require(
            n == ny,
            f"The {name} set has {n} inputs but {ny} targets; they must match one to one.",
            DataError,
        )
        self.n = n

    def __len__(self) -> int:
        return self.n

    def raw_batches(self, batch_size: int) -> Iterator[Any]:
        for a in range(0, self.n, batch_size):
            yield _slice(self.X, slice(a, a + batch_size)), _slice(self.y, slice(a, a + batch_size))

    def subset(self, indices: torch.Tensor) -> Source:
        idx = indices.long().cpu()
        return TensorSource(_take(self.X, idx), _take(self.y, idx), self.name)


class DatasetSource(Source):
    """A map-style ``Dataset``: batched with PyTorch's default collate, in index order."""

    def __init__(self, dataset: Dataset, name: str = "data", collate_fn: Any = None) -> None:
        super().__init__(name)
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError as err:
            raise DataError(
                f"The {name} Dataset has no length; tdakit indexes examples by position, so "
                "pass a map-style Dataset (with __len__ and __getitem__) or (X, y)."
            ) from err
        require(n > 0, f"The {name} set is empty: it needs at least one example.", DataError)
        self.dataset, self.n, self.collate_fn = dataset, n, collate_fn

    def __len__(self) -> int:
        return self.n

    def raw_batches(self, batch_size: int) -> Iterator[Any]:
        loader = DataLoader(
            self.dataset, batch_size=batch_size, shuffle=False, collate_fn=self.collate_fn
        )
        yield from loader

    def subset(self, indices: torch.Tensor) -> Source:
        return DatasetSource(Subset(self.dataset, indices.tolist()), self.name, self.collate_fn)


class LoaderSource(Source):
    """A user's ``DataLoader``: used as it is (its batch size, collate, workers)."""

    def __init__(self, loader: DataLoader, name: str = "data") -> None:
        super().__init__(name)
        require(
            not isinstance(loader.dataset, IterableDataset),
            f"The {name} DataLoader reads an IterableDataset; tdakit indexes examples by "
            "position, so pass a map-style Dataset.",
            DataError,
        )
        _check_sequential(loader, name)
        self.loader = loader
        self.n = DatasetSource(loader.dataset, name).n

    def __len__(self) -> int:
        return self.n

    def raw_batches(self, batch_size: int) -> Iterator[Any]:
        yield from self.loader

    def subset(self, indices: torch.Tensor) -> Source:
        sub = Subset(self.loader.dataset, indices.tolist())
        return DatasetSource(sub, self.name, self.loader.collate_fn)


def _check_sequential(loader: DataLoader, name: str) -> None:
    fix = (
        "scores are indexed by example position, so pass a DataLoader with shuffle=False, "
        "the default sequential sampler and drop_last=False, or the Dataset itself."
    )
    sampler, batch_sampler = loader.sampler, loader.batch_sampler
    if batch_sampler is not None:
        require(
            type(batch_sampler) is BatchSampler,
            f"The {name} DataLoader uses a custom batch_sampler "
            f"({type(batch_sampler).__name__}); {fix}",
            DataError,
        )
        require(
            not batch_sampler.drop_last,
            f"The {name} DataLoader drops its last incomplete batch (drop_last=True); {fix}",
            DataError,
        )
        sampler = batch_sampler.sampler
    require(
        type(sampler) is SequentialSampler,
        f"The {name} DataLoader draws examples with a {type(sampler).__name__} (shuffle=True, "
        f"or a random/subset sampler); {fix}",
        DataError,
    )


def _length(value: Any, what: str) -> int:
    if isinstance(value, torch.Tensor):
        require(value.ndim >= 1, f"{what} must have a batch dimension, got a scalar.", DataError)
        return len(value)
    if isinstance(value, dict):
        sizes = {_length(v, f"{what}[{k!r}]") for k, v in value.items()}
        require(
            len(sizes) == 1, f"{what} entries have different lengths {sorted(sizes)}.", DataError
        )
        return sizes.pop()
    try:
        return len(value)
    except TypeError as err:
        raise DataError(
            f"{what} must be a torch.Tensor, numpy array, dict of tensors or a sequence, got "
            f"{type(value).__name__}."
        ) from err


def _slice(value: Any, s: slice) -> Any:
    if isinstance(value, dict):
        return {k: _slice(v, s) for k, v in value.items()}
    return value[s]


def _take(value: Any, idx: torch.Tensor) -> Any:
    if isinstance(value, dict):
        return {k: _take(v, idx) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value[idx.to(value.device)]
    return [value[int(i)] for i in idx]


def as_source(data: DataLike, name: str = "data") -> Source:
    """A :class:`Source` from a tuple ``(X, y)``, a Dataset, a DataLoader or a Source."""
    if isinstance(data, Source):
        return data
    if isinstance(data, DataLoader):
        return LoaderSource(data, name)
    if isinstance(data, Dataset):
        return DatasetSource(data, name)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return TensorSource(data[0], data[1], name)
    raise DataError(
        f"Unsupported {name}: {type(data).__name__}. Pass a tuple (X, y), a map-style torch "
        "Dataset, or a DataLoader with shuffle=False."
    )


def to_tensors(data: DataLike, name: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` tensors in memory: for retraining oracles, which train on the whole set."""
    source = as_source(data, name)
    if isinstance(source, TensorSource) and isinstance(source.X, torch.Tensor):
        X, y = source.X, source.y
    else:
        xs, ys = [], []
        for raw in source.raw_batches(1024):
            pair = isinstance(raw, (tuple, list)) and len(raw) >= 2
            x, t = (raw[0], raw[1]) if pair else (None, None)
            require(
                isinstance(x, torch.Tensor) and isinstance(t, torch.Tensor),
                f"Retraining needs the {name} data as (x, y) tensor pairs; got batches of "
                f"{type(raw).__name__}.",
                DataError,
            )
            xs.append(x)
            ys.append(t)
        X, y = torch.cat(xs), torch.cat(ys)
    y = torch.as_tensor(y)
    require(
        X.ndim >= 1 and len(X) == len(y) and len(X) > 0,
        f"The {name} set must be non-empty with one target per input.",
        DataError,
    )
    if X.is_floating_point():
        require(
            bool(torch.isfinite(X).all()),
            f"The {name} inputs contain NaN or inf; clean or impute them first.",
            DataError,
        )
    return X, y
