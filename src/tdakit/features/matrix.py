"""Training features ``[N, d]`` kept where they fit: in memory, in a feature store on disk
(memory-mapped, read block by block), or not at all (recomputed from the data each pass).

``storage="auto"`` keeps them in memory up to ``max_memory`` bytes, else in a feature store
(in ``cache_dir``, or a temporary directory removed with the method), else, when the disk
cannot hold them either, recomputes them. With a ``cache_dir`` the store is keyed by
content (model, code, data, configuration), so a second fit reuses it.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tdakit.data.sources import Batch, Source
from tdakit.errors import require
from tdakit.storage.fileio import cache_key
from tdakit.storage.store import FeatureStore

STORAGE = ("auto", "memory", "store", "recompute")
Featurize = Callable[[Batch], torch.Tensor]
Block = tuple[int, int, torch.Tensor]


class TrainFeatures:
    """Blocks of the ``[n, dim]`` training features, however they are kept."""

    storage = "memory"

    def __init__(self, n: int, dim: int) -> None:
        self.n, self.dim = n, dim

    def blocks(self, size: int) -> Iterator[Block]:
        """``(start, stop, T[start:stop])`` in order, on the model's device."""
        raise NotImplementedError

    def rows(self, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError


class MemoryFeatures(TrainFeatures):
    def __init__(self, T: torch.Tensor) -> None:
        super().__init__(len(T), T.shape[1])
        self.T = T

    def blocks(self, size: int) -> Iterator[Block]:
        for a in range(0, self.n, size):
            yield a, min(a + size, self.n), self.T[a : a + size]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.T[start:stop]


class StoredFeatures(TrainFeatures):
    """A complete :class:`FeatureStore`, read chunk by chunk (memory-mapped)."""

    storage = "store"

    def __init__(self, store: FeatureStore, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(store.n_rows, store.dim)
        self.store, self.device, self.dtype = store, device, dtype

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, self.dtype)

    def blocks(self, size: int) -> Iterator[Block]:
        for a in range(0, self.n, size):
            b = min(a + size, self.n)
            yield a, b, self._tensor(self.store.read(a, b))

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self._tensor(self.store.read(start, stop))


class RecomputedFeatures(TrainFeatures):
    """Nothing kept: every pass featurises the training data again."""

    storage = "recompute"

    def __init__(
        self, source: Source, featurize: Featurize, task: Any, batch_size: int, dim: int
    ) -> None:
        super().__init__(len(source), dim)
        self.source, self.featurize, self.task, self.batch_size = (
            source,
            featurize,
            task,
            batch_size,
        )

    def blocks(self, size: int) -> Iterator[Block]:
        for b in self.source.batches(self.task, self.batch_size):
            yield b.start, b.stop, self.featurize(b)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        sub = self.source.subset(torch.arange(start, stop))
        return torch.cat([self.featurize(b) for b in sub.batches(self.task, self.batch_size)])


def build_train_features(
    featurize: Featurize,
    source: Source,
    task: Any,
    *,
    storage: str = "auto",
    batch_size: int = 128,
    cache_dir: str | Path | None = None,
    meta: Callable[[], dict] | None = None,
    max_memory: int = 1 << 30,
    progress: bool = False,
    desc: str = "train features",
    width: Callable[[], int | None] | None = None,
    featurize_into: Callable[[Batch, torch.Tensor], None] | None = None,
) -> TrainFeatures:
    """Featurise ``source`` and keep the result as ``storage`` says (see module doc).

    ``width()`` (asked once the first batch has resolved the task) may give the row width
    in advance; with ``featurize_into(batch, rows)`` the rows are then written straight into
    the ``[N, d]`` matrix (in the task's dtype), with no per-batch copy.
    """
    require(storage in STORAGE, f"Unknown storage {storage!r}; use one of {STORAGE}.")
    batches = source.batches(task, batch_size)
    in_memory = storage == "memory" or (storage == "auto" and cache_dir is None)
    if in_memory and width is not None and featurize_into is not None:
        b0 = next(batches)  # resolves the task (params="last_layer") before sizing
        d = width()
        itemsize = torch.empty(0, dtype=task.dtype).element_size()
        if d is not None and (storage == "memory" or len(source) * d * itemsize <= max_memory):
            T = torch.empty(len(source), d, dtype=task.dtype, device=task.device)
            bar = tqdm(total=len(source), desc=desc, disable=not progress, leave=False)
            for b in itertools.chain([b0], batches):
                featurize_into(b, T[b.start : b.stop])
                bar.update(b.stop - b.start)
            bar.close()
            return MemoryFeatures(T)
        batches = itertools.chain([b0], batches)
    if in_memory:
        F0 = featurize(next(batches))  # kept: the first rows of the matrix
    else:
        # A one-example probe for the feature dimension: a cached store is reused without
        # featurising a batch, and stored/recomputed features never keep these rows.
        F0 = featurize(next(source.subset(torch.arange(1)).batches(task, 1)))
    n, dim = len(source), F0.shape[1]
    nbytes = n * dim * F0.element_size()
    if storage == "auto" and cache_dir is None and nbytes <= max_memory:
        storage = "memory"
    if storage == "auto":
        free = shutil.disk_usage(_existing(cache_dir or tempfile.gettempdir())).free
        storage = "store" if nbytes <= free // 2 else "recompute"
        if storage == "recompute":
            warnings.warn(
                f"The training features ({nbytes / 2**30:.1f} GiB) fit neither in memory "
                f"(max_memory) nor on the disk; they are recomputed on every pass. Use a "
                "projection (projection=k) to make them smaller.",
                RuntimeWarning,
                stacklevel=3,
            )
    if storage == "recompute":
        return RecomputedFeatures(source, featurize, task, batch_size, dim)
    if storage == "memory":
        if len(F0) == n and F0._base is None and F0.is_contiguous():
            return MemoryFeatures(F0)  # one batch is the whole matrix: no second copy
        T = torch.empty(n, dim, dtype=F0.dtype, device=F0.device)
        T[: len(F0)] = F0
        first = len(F0)
        del F0  # freed before the next batch is featurised: one batch beside T, not two
        bar = tqdm(total=n, initial=first, desc=desc, disable=not progress, leave=False)
        for b in batches:
            T[b.start : b.stop] = featurize(b)
            bar.update(b.stop - b.start)
        bar.close()
        return MemoryFeatures(T)
    return _stored(featurize, source, task, batch_size, cache_dir, meta, dim, F0, progress)


def _existing(path: str | Path) -> Path:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _stored(featurize, source, task, batch_size, cache_dir, meta, dim, F0, progress):
    # A store holds float16/32/64; bfloat16 rows are kept as float32 (exactly).
    dtype = "float32" if F0.dtype == torch.bfloat16 else str(F0.dtype).removeprefix("torch.")
    if cache_dir is not None:
        parts = {} if meta is None else meta()
        path = Path(cache_dir) / f"features-{cache_key(**parts, dim=dim, dtype=dtype)}"
    else:
        parts = {}
        path = Path(tempfile.mkdtemp(prefix="tdakit-features-"))
    chunk = max(batch_size, (2048 // batch_size) * batch_size)
    store = FeatureStore.open(path, len(source), dim, dtype=dtype, meta=parts, chunk_rows=chunk)

    def rows(a: int, b: int) -> torch.Tensor:
        sub = source.subset(torch.arange(a, b))
        return torch.cat([featurize(x) for x in sub.batches(task, batch_size)])

    store.fill(rows, progress=progress)
    out = StoredFeatures(store, F0.device, F0.dtype)
    if cache_dir is None:
        weakref.finalize(out, shutil.rmtree, path, True)
    return out
