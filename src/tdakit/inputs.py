"""Turn what users pass as data (tuples, Datasets, DataLoaders, arrays) into checked tensors."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from tdakit.errors import TdakitError, require

DataLike = Any  # (X, y) tuple, torch Dataset of (x, y) pairs, or a DataLoader


def _to_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (int, float)):
        return torch.as_tensor(value)
    raise TdakitError(f"{what} must be a torch.Tensor or numpy array, got {type(value).__name__}.")


def _from_dataset(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError as err:
        raise TdakitError("The dataset has no length; pass a map-style Dataset or (X, y).") from err
    require(n > 0, "The dataset is empty: attribution needs at least one example.")
    items = [data[i] for i in range(n)]
    require(
        all(isinstance(it, (tuple, list)) and len(it) >= 2 for it in items[:1]),
        "Dataset items must be (x, y) pairs; wrap your data as a TensorDataset(X, y).",
    )
    xs = torch.stack([_to_tensor(it[0], "x") for it in items])
    ys = torch.stack([torch.as_tensor(it[1]) for it in items])
    return xs, ys


def _from_loader(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    require(
        not isinstance(loader.sampler, RandomSampler),
        "The DataLoader shuffles (shuffle=True): scores are indexed by example position, "
        "so pass a DataLoader with shuffle=False, or the Dataset itself.",
    )
    xs, ys = [], []
    for batch in loader:
        require(
            isinstance(batch, (tuple, list)) and len(batch) >= 2,
            "DataLoader batches must be (x, y) pairs.",
        )
        xs.append(_to_tensor(batch[0], "x"))
        ys.append(_to_tensor(batch[1], "y"))
    require(len(xs) > 0, "The DataLoader yielded no batches: attribution needs data.")
    return torch.cat(xs), torch.cat(ys)


def as_tensors(data: DataLike, name: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(X, y)`` tensors from a tuple, Dataset or DataLoader, checking them."""
    if isinstance(data, DataLoader):
        X, y = _from_loader(data)
    elif isinstance(data, Dataset):
        X, y = _from_dataset(data)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = _to_tensor(data[0], f"{name} X"), _to_tensor(data[1], f"{name} y")
    else:
        raise TdakitError(
            f"Unsupported {name}: {type(data).__name__}. Pass a tuple (X, y) of tensors, "
            "a torch Dataset of (x, y) pairs, or a DataLoader with shuffle=False."
        )
    require(X.ndim >= 1 and len(X) > 0, f"The {name} set is empty: it needs at least one example.")
    require(
        len(X) == len(y),
        f"The {name} set has {len(X)} inputs but {len(y)} targets; they must match one to one.",
    )
    if X.is_floating_point():
        require(
            bool(torch.isfinite(X).all()),
            f"The {name} inputs contain NaN or inf; clean or impute them before attribution.",
        )
    return X, y


def batches(
    X: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device, dtype: torch.dtype
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, stop, x, y)`` slices moved to ``device``; float inputs cast to ``dtype``."""
    require(batch_size > 0, f"batch_size must be positive, got {batch_size}.")
    for start in range(0, len(X), batch_size):
        stop = min(start + batch_size, len(X))
        xb, yb = X[start:stop].to(device), y[start:stop].to(device)
        if xb.is_floating_point():
            xb = xb.to(dtype)
        if yb.is_floating_point():
            yb = yb.to(dtype)
        yield start, stop, xb, yb


def check_float_dtype(X: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    """Reject tensors whose floating dtype differs from the model's (numpy input is cast)."""
    if X.is_floating_point() and X.dtype != dtype:
        raise TdakitError(
            f"The {name} inputs are {X.dtype} but the model's parameters are {dtype}; "
            f"cast them with X.to({dtype}) (or the model with model.to({dtype}))."
        )


def fingerprint_tensors(*tensors: torch.Tensor) -> str:
    """A short sha256 digest of the tensors' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
