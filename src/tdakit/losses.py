"""The one table of per-example losses and query measurements.

Every loss maps ``(outputs [B, ...], targets [B, ...]) -> [B]`` and is never rescaled.
Measurements are *loss-like* (lower = better): the loss itself, ``-margin`` or ``-logit``,
so that a method differentiating them gives positive scores to helpful examples.
The functions are pure (no data-dependent checks) so that ``torch.func.vmap`` can run them;
:func:`check_targets` validates a batch's targets before they get here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from tdakit.errors import ConfigError, DataError, require

PerExample = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy of logits ``[B, C]`` at integer labels ``[B]``."""
    require(
        outputs.ndim == 2,
        f"cross_entropy needs logits of shape [batch, classes], got {tuple(outputs.shape)}.",
        DataError,
    )
    return F.cross_entropy(outputs, targets.long(), reduction="none")


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example ``0.5 * ||f(x) - y||^2`` (so its Gauss-Newton matrix is ``J^T J``)."""
    targets = targets.to(outputs.dtype)
    if targets.shape != outputs.shape:
        require(
            targets.numel() == outputs.numel(),
            f"mse targets of shape {tuple(targets.shape)} do not match model outputs "
            f"{tuple(outputs.shape)}; give one target per model output.",
            DataError,
        )
        targets = targets.reshape(outputs.shape)
    return 0.5 * (outputs - targets).pow(2).reshape(len(outputs), -1).sum(1)


def negative_margin(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-(z_y - logsumexp_{j != y} z_j)``: the loss-like form of the classification margin."""
    require(
        outputs.ndim == 2 and outputs.shape[1] >= 2,
        f"margin needs logits [batch, C >= 2], got {tuple(outputs.shape)}.",
        DataError,
    )
    index = targets.long().view(-1, 1)
    correct = outputs.gather(1, index).squeeze(1)
    others = outputs.scatter(1, index, float("-inf"))
    return torch.logsumexp(others, dim=1) - correct


class NegativeLogit:
    """``-z_k``: the loss-like form of logit ``k`` (picklable, unlike a closure)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.__name__ = f"logit[{index}]"

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -outputs.reshape(len(outputs), -1)[:, self.index]


LOSSES: dict[str, PerExample] = {"cross_entropy": cross_entropy, "mse": squared_error}
MEASUREMENTS = ("loss", "margin")


def resolve_loss(loss: str | PerExample) -> tuple[str, PerExample]:
    """``(name, fn)`` for a loss name in :data:`LOSSES` or a per-example callable."""
    if callable(loss):
        return getattr(loss, "__name__", type(loss).__name__), loss
    require(
        loss in LOSSES,
        f"Unknown loss {loss!r}; use one of {tuple(LOSSES)} or a callable "
        "loss(outputs, targets) -> [batch].",
    )
    return str(loss), LOSSES[loss]


def resolve_measurement(
    measurement: str | int | PerExample, loss: PerExample
) -> tuple[str, PerExample]:
    """``(name, fn)`` for ``"loss"``, ``"margin"``, a logit index or a loss-like callable."""
    if isinstance(measurement, bool):
        raise ConfigError("measurement must be 'loss', 'margin', a logit index or a callable.")
    if isinstance(measurement, int):
        require(measurement >= 0, f"The logit index must be >= 0, got {measurement}.")
        fn = NegativeLogit(measurement)
        return fn.__name__, fn
    if callable(measurement):
        return getattr(measurement, "__name__", type(measurement).__name__), measurement
    table = {"loss": loss, "margin": negative_margin}
    require(
        measurement in table,
        f"Unknown measurement {measurement!r}; use one of {MEASUREMENTS}, a logit index "
        "or a loss-like callable.",
    )
    return str(measurement), table[measurement]


def check_targets(fn: PerExample, targets: torch.Tensor, out_shape: tuple[int, ...]) -> None:
    """Validate a batch's targets for ``fn``, given the model's per-example output shape."""
    if fn in (cross_entropy, negative_margin) or isinstance(fn, NegativeLogit):
        if isinstance(fn, NegativeLogit):
            width = int(torch.Size(out_shape).numel())
            require(
                fn.index < width,
                f"measurement logit index {fn.index} is out of range: the model has {width} "
                f"outputs; use an index in [0, {width}).",
            )
            return
        require(
            not targets.is_floating_point()
            and not targets.is_complex()
            and targets.dtype != torch.bool
            and targets.ndim == 1,
            f"cross_entropy needs integer class labels of shape [batch], got {targets.dtype} "
            f"{tuple(targets.shape)}; convert with y.long().",
            DataError,
        )
        classes = out_shape[0] if len(out_shape) == 1 else 0
        if len(targets):
            lo, hi = int(targets.min()), int(targets.max())
            require(
                lo >= 0 and hi < classes,
                f"Class labels must lie in [0, {classes}) for a model with {classes} outputs, "
                f"got labels in [{lo}, {hi}]. Labels such as -100 (ignored by PyTorch) would "
                "give zero gradients; drop those examples or relabel them.",
                DataError,
            )
