"""Seeded data transforms that plant a known ground truth: label flips, backdoor triggers,
merged super-classes, mixtures of two datasets.

Pure functions: inputs are never modified; each returns new tensors plus the indicator
of what was changed. Random choices use a CPU ``torch.Generator`` seeded with ``seed``;
results are moved to the input's device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tdakit.errors import ConfigError, require

__all__ = [
    "add_trigger",
    "apply_trigger",
    "flip_labels",
    "group_classes",
    "mix_datasets",
]

LOCATIONS = ("corner", "top_left", "center")


def _tensor(x: object, name: str) -> Tensor:
    require(isinstance(x, Tensor), f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    return x  # type: ignore[return-value]


def _int_labels(y: object, name: str = "y") -> Tensor:
    y = _tensor(y, name)
    require(
        y.ndim == 1 and not y.is_floating_point() and y.dtype != torch.bool,
        f"{name} must be 1-D integer class labels, got {y.dtype} of shape {tuple(y.shape)}; "
        "convert with .long().",
    )
    require(len(y) > 0, f"{name} is empty; the transform needs at least one example.")
    return y


def _fraction(fraction: object, name: str = "fraction") -> float:
    ok = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
    require(
        ok and math.isfinite(fraction) and 0.0 <= fraction <= 1.0,  # type: ignore[arg-type]
        f"{name} must be a number in [0, 1], got {fraction!r}.",
    )
    return float(fraction)  # type: ignore[arg-type]


def _choose(candidates: Tensor, count: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    return candidates[torch.randperm(len(candidates), generator=gen)[:count]]


def flip_labels(y: Tensor, fraction: float, n_classes: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Flip ``round(fraction * n)`` labels, each to a different class chosen uniformly.

    Returns ``(y_new, flipped)`` with ``flipped`` a bool mask; every flipped label differs
    from the original.
    """
    y = _int_labels(y)
    fraction = _fraction(fraction)
    require(
        isinstance(n_classes, int) and n_classes >= 2,
        f"n_classes must be an int >= 2 (a flip needs another class), got {n_classes!r}.",
    )
    require(
        int(y.min()) >= 0 and int(y.max()) < n_classes,
        f"Labels must lie in [0, {n_classes}); got values in [{int(y.min())}, {int(y.max())}].",
    )
    n = len(y)
    idx = _choose(torch.arange(n), round(fraction * n), seed)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    shift = torch.randint(1, n_classes, (len(idx),), generator=gen)
    y_new = y.detach().clone().cpu()
    y_new[idx] = (y_new[idx] + shift) % n_classes
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[idx] = True
    return y_new.to(y.device), flipped.to(y.device)


def apply_trigger(
    X: Tensor, *, patch_size: int = 3, value: float = 1.0, location: str = "corner"
) -> Tensor:
    """A copy of images ``[n, C, H, W]`` (or ``[n, H, W]``) with a square patch of ``value``.

    ``location``: ``"corner"`` (bottom right), ``"top_left"`` or ``"center"``. Use it on
    test queries with the settings given to :func:`add_trigger`.
    """
    X = _tensor(X, "X")
    require(
        X.ndim in (3, 4) and X.is_floating_point(),
        f"X must be floating images [n, C, H, W] or [n, H, W], got {X.dtype} of shape "
        f"{tuple(X.shape)}; reshape flat features with X.view(n, C, H, W).",
    )
    H, W = X.shape[-2:]
    require(
        isinstance(patch_size, int) and 1 <= patch_size <= min(H, W),
        f"patch_size must be an int in [1, {min(H, W)}] for {H}x{W} images, got {patch_size!r}.",
    )
    require(
        isinstance(value, (int, float)) and math.isfinite(value),
        f"value must be a finite number, got {value!r}.",
    )
    if location == "corner":
        r, c = H - patch_size, W - patch_size
    elif location == "top_left":
        r, c = 0, 0
    elif location == "center":
        r, c = (H - patch_size) // 2, (W - patch_size) // 2
    else:
        raise ConfigError(f"Unknown location {location!r}; use one of {LOCATIONS}.")
    out = X.detach().clone()
    out[..., r : r + patch_size, c : c + patch_size] = value
    return out


def add_trigger(
    X: Tensor,
    y: Tensor,
    fraction: float,
    target_class: int,
    seed: int = 0,
    *,
    patch_size: int = 3,
    value: float = 1.0,
    location: str = "corner",
) -> tuple[Tensor, Tensor, Tensor]:
    """Plant a backdoor: stamp a patch on ``round(fraction * n)`` images and relabel them.

    The poisoned examples are drawn (seeded) from those not already labelled
    ``target_class``. Returns ``(X_new, y_new, triggered)``; apply the same patch to test
    queries with :func:`apply_trigger`.
    """
    X, y = _tensor(X, "X"), _int_labels(y)
    require(len(X) == len(y), f"X has {len(X)} examples but y has {len(y)}.")
    fraction = _fraction(fraction)
    require(
        isinstance(target_class, int) and target_class >= 0,
        f"target_class must be a non-negative int, got {target_class!r}.",
    )
    candidates = torch.nonzero(y.cpu() != target_class).flatten()
    count = round(fraction * len(y))
    require(
        count <= len(candidates),
        f"fraction={fraction} asks for {count} poisoned examples but only {len(candidates)} "
        f"are not already of class {target_class}; lower the fraction.",
    )
    idx = _choose(candidates, count, seed)
    stamped = apply_trigger(X[idx], patch_size=patch_size, value=value, location=location)
    X_new, y_new = X.detach().clone(), y.detach().clone()
    X_new[idx.to(X.device)] = stamped
    y_new[idx.to(y.device)] = target_class
    triggered = torch.zeros(len(y), dtype=torch.bool)
    triggered[idx] = True
    return X_new, y_new, triggered.to(y.device)


def group_classes(y: Tensor, groups: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Merge classes into super-classes: ``y_super[i]`` is the index of the group holding
    ``y[i]``; ``y_sub`` is a copy of the original (subclass) labels.

    ``groups`` must be disjoint and cover every label present in ``y``.
    """
    y = _int_labels(y)
    require(
        isinstance(groups, (list, tuple))
        and len(groups) > 0
        and all(isinstance(g, (list, tuple)) and len(g) > 0 for g in groups),
        "groups must be a non-empty list of non-empty lists of class labels, e.g. [[0, 1], [2]].",
    )
    table: dict[int, int] = {}
    for gi, group in enumerate(groups):
        for c in group:
            require(isinstance(c, int), f"Class labels in groups must be ints, got {c!r}.")
            require(c not in table, f"Class {c} appears in more than one group.")
            table[c] = gi
    present = sorted(int(c) for c in torch.unique(y.cpu()))
    missing = [c for c in present if c not in table]
    require(not missing, f"Labels {missing} are in y but in no group; add them to a group.")
    lookup = torch.full((max(max(table), present[-1]) + 1,), -1, dtype=torch.long)
    for c, gi in table.items():
        lookup[c] = gi
    require(present[0] >= 0, "Labels must be non-negative.")
    y_super = lookup.to(y.device)[y.long()].to(y.dtype)
    return y_super, y.detach().clone()


def mix_datasets(
    X_a: Tensor,
    y_a: Tensor,
    X_b: Tensor,
    y_b: Tensor,
    fraction_b: float,
    seed: int = 0,
    *,
    size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """A shuffled mixture of ``size`` examples (default ``len(X_a)``), ``round(fraction_b *
    size)`` drawn without replacement from B and the rest from A.

    Returns ``(X, y, source)`` with ``source[i] = True`` for examples from B.
    """
    X_a, y_a, X_b, y_b = (
        _tensor(t, n) for t, n in ((X_a, "X_a"), (y_a, "y_a"), (X_b, "X_b"), (y_b, "y_b"))
    )
    for X, y, tag in ((X_a, y_a, "a"), (X_b, y_b, "b")):
        require(len(X) > 0, f"X_{tag} is empty.")
        require(len(X) == len(y), f"X_{tag} has {len(X)} examples but y_{tag} has {len(y)}.")
    require(
        X_a.shape[1:] == X_b.shape[1:] and y_a.shape[1:] == y_b.shape[1:],
        f"The datasets' example shapes differ: X {tuple(X_a.shape[1:])} vs "
        f"{tuple(X_b.shape[1:])}, y {tuple(y_a.shape[1:])} vs {tuple(y_b.shape[1:])}; "
        "bring them to the same shape first.",
    )
    require(
        X_a.dtype == X_b.dtype and y_a.dtype == y_b.dtype,
        f"The datasets' dtypes differ (X {X_a.dtype} vs {X_b.dtype}, y {y_a.dtype} vs "
        f"{y_b.dtype}); convert one of them.",
    )
    require(X_a.device == X_b.device, "X_a and X_b live on different devices.")
    fraction_b = _fraction(fraction_b, "fraction_b")
    size = len(X_a) if size is None else size
    require(isinstance(size, int) and size >= 1, f"size must be a positive int, got {size!r}.")
    n_b = round(fraction_b * size)
    n_a = size - n_b
    require(
        n_a <= len(X_a) and n_b <= len(X_b),
        f"The mixture needs {n_a} examples from A (has {len(X_a)}) and {n_b} from B "
        f"(has {len(X_b)}); lower size or fraction_b.",
    )
    ia = _choose(torch.arange(len(X_a)), n_a, seed)
    ib = _choose(torch.arange(len(X_b)), n_b, seed + 1)
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(int(seed) + 2))
    dev = X_a.device
    X = torch.cat([X_a[ia.to(dev)], X_b[ib.to(dev)]])[perm.to(dev)]
    ydev = y_a.device
    y = torch.cat([y_a[ia.to(ydev)], y_b[ib.to(ydev)]])[perm.to(ydev)]
    source = torch.cat([torch.zeros(n_a, dtype=torch.bool), torch.ones(n_b, dtype=torch.bool)])
    return X, y, source[perm].to(ydev)
