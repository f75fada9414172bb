"""Input checks shared by the metrics: every problem becomes a TdakitError saying how to fix it."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tdakit.errors import DataError, require_data


def tensor(x: object, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise DataError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}.")


def _shape(x: Tensor, name: str, ndim: int, shape: tuple[int | None, ...] | None) -> None:
    require_data(
        x.ndim == ndim,
        f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}.",
    )
    require_data(x.numel() > 0, f"{name} is empty (shape {tuple(x.shape)}); the metric needs data.")
    if shape is not None:
        for axis, (got, want) in enumerate(zip(x.shape, shape, strict=False)):
            require_data(
                want is None or got == want,
                f"{name} has size {got} along dimension {axis} but {want} was expected from "
                f"the other inputs (shape {tuple(x.shape)}); check that scores, masks and "
                "outcomes refer to the same queries and training examples.",
            )


def floats(x: object, name: str, ndim: int, shape: tuple[int | None, ...] | None = None) -> Tensor:
    """A finite floating tensor with ``ndim`` dims (and the given sizes), as float64 on CPU."""
    t = tensor(x, name)
    require_data(
        t.is_floating_point(),
        f"{name} must be a floating-point tensor, got {t.dtype}; convert with .double().",
    )
    _shape(t, name, ndim, shape)
    require_data(
        bool(torch.isfinite(t).all()),
        f"{name} contains NaN or inf; fix the scores/outcomes before computing the metric.",
    )
    return t.double().cpu()


def mask(x: object, name: str, ndim: int, shape: tuple[int | None, ...] | None = None) -> Tensor:
    """A boolean tensor (CPU)."""
    t = tensor(x, name)
    require_data(
        t.dtype == torch.bool,
        f"{name} must be a boolean tensor, got {t.dtype}; convert 0/1 values with .bool().",
    )
    _shape(t, name, ndim, shape)
    return t.cpu()


def labels(x: object, name: str, length: int | None = None) -> Tensor:
    """Integer labels ``[n]`` (CPU, int64)."""
    t = tensor(x, name)
    require_data(
        not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
        f"{name} must hold integer labels, got {t.dtype}; convert with .long().",
    )
    _shape(t, name, 1, (length,))
    return t.long().cpu()


def positive_int(x: object, name: str, maximum: int | None = None) -> int:
    ok = isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1
    require_data(ok, f"{name} must be a positive int, got {x!r}.")
    if maximum is not None:
        require_data(x <= maximum, f"{name}={x} exceeds the number of available items ({maximum}).")
    return int(x)


def ranked(S_or_idx: object, k: int, n_train: int | None = None, name: str = "S") -> Tensor:
    """Top-``k`` training indices ``[n_query, k]`` best first, from scores or ranked indices.

    Floating input is a score matrix ``[n_query, n_train]`` (top-k by decreasing score);
    integer input is already-ranked indices ``[n_query, >= k]`` (e.g. from ``top_k``).
    """
    t = tensor(S_or_idx, name)
    require_data(
        t.ndim == 2 and t.numel() > 0,
        f"{name} must be scores [n_query, n_train] or top-k indices [n_query, k], got shape "
        f"{tuple(t.shape)}.",
    )
    if t.is_floating_point():
        t = floats(t, name, 2, (None, n_train))
        k = positive_int(k, "k", t.shape[1])
        return torch.topk(t, k, dim=1).indices
    require_data(t.dtype != torch.bool, f"{name} must be scores or integer indices, not booleans.")
    k = positive_int(k, "k", t.shape[1])
    t = t[:, :k].long().cpu()
    if n_train is not None:
        require_data(
            bool(((t >= 0) & (t < n_train)).all()),
            f"{name} holds indices outside [0, {n_train}); pass indices into the training set.",
        )
    return t
