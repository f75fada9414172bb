"""Train a given ``nn.Module`` (seeded); a convenience over the training-recipe loop."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from tdakit.errors import DataError, require
from tdakit.losses import LOSSES
from tdakit.task import eval_mode
from tdakit.training.loop import train_loop
from tdakit.training.recipe import TrainingRecipe

__all__ = ["LOSSES", "OPTIMIZERS", "TrainResult", "train_model"]

OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainResult:
    """The trained model (in eval mode), per-epoch mean losses and optional checkpoints.

    ``checkpoints[i]`` is a detached copy of the state dict (on the model's device)
    and ``checkpoint_lrs[i]`` the learning rate in use when it was taken.
    """

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    checkpoints: list[dict[str, Tensor]] = field(default_factory=list)
    checkpoint_lrs: list[float] = field(default_factory=list)


def _as_tensor(value: object, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise DataError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}.")


def _check_number(value: object, name: str, low: float, *, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    require(
        ok and value >= low,
        f"{name} must be a finite {'integer' if integer else 'number'} >= {low}, got {value!r}.",
    )


def _check_logits(out: Tensor, max_label: int) -> None:
    require(
        out.dim() == 2 and out.shape[1] > max_label,
        f"cross_entropy needs logits [B, num_classes] with num_classes > the largest label "
        f"({max_label}), but the model outputs shape {tuple(out.shape)}; build the model "
        "with enough classes.",
    )


def train_model(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    loss: str = "cross_entropy",
    epochs: int = 20,
    lr: float = 0.05,
    batch_size: int = 64,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    checkpoint_every: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place on ``(X, y)`` with mini-batches and return a :class:`TrainResult`.

    Batches follow a fresh permutation each epoch drawn from a CPU generator seeded
    with ``seed`` (the last batch may be smaller), and dropout-style randomness is
    seeded too, so the same seed and initial parameters give identical results. Data
    move to the model's device. ``loss`` is ``"cross_entropy"`` (``y`` int labels [n])
    or ``"mse"`` (``0.5 * ||f(x) - y||^2`` per example, as in :class:`tdakit.Task`; float
    ``y`` [n] or [n, d]). ``momentum`` only applies to SGD. It runs the same loop as
    :class:`tdakit.groundtruth.TrainingRecipe`. With
    ``checkpoint_every=k`` a state-dict copy is kept after every k-th epoch. The model
    is left in eval mode.
    """
    require(isinstance(model, nn.Module), f"model must be a torch.nn.Module, got {type(model)}.")
    require(loss in LOSSES, f"Unknown loss {loss!r}; choose one of {', '.join(LOSSES)}.")
    require(
        optimizer in OPTIMIZERS,
        f"Unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.",
    )
    _check_number(epochs, "epochs", 1, integer=True)
    _check_number(batch_size, "batch_size", 1, integer=True)
    _check_number(seed, "seed", 0, integer=True)
    _check_number(lr, "lr", 0.0)
    require(lr > 0, f"lr must be > 0, got {lr!r}.")
    _check_number(momentum, "momentum", 0.0)
    require(momentum < 1, f"momentum must be in [0, 1), got {momentum!r}.")
    _check_number(weight_decay, "weight_decay", 0.0)
    if checkpoint_every is not None:
        _check_number(checkpoint_every, "checkpoint_every", 1, integer=True)

    params = [p for p in model.parameters() if p.requires_grad]
    require(len(params) > 0, "model has no trainable parameters (requires_grad=True) to train.")
    device, dtype = params[0].device, params[0].dtype
    X, y = _as_tensor(X, "X"), _as_tensor(y, "y")
    require(X.dim() >= 1 and X.shape[0] > 0, "X is empty: pass at least one training example.")
    require(
        y.dim() >= 1 and X.shape[0] == y.shape[0],
        f"X has {X.shape[0]} examples but y has shape {tuple(y.shape)}; "
        "they must have the same length along the first dimension.",
    )
    require(X.is_floating_point(), f"X must be floating point, got dtype {X.dtype}.")
    if loss == "cross_entropy":
        require(
            not y.is_floating_point() and not y.is_complex() and y.dim() == 1,
            f"cross_entropy needs integer class labels y of shape [n], got {y.dtype} "
            f"{tuple(y.shape)}; use loss='mse' for real-valued targets.",
        )
        y = y.to(device=device, dtype=torch.long)
        require(int(y.min()) >= 0, "cross_entropy labels must be >= 0 (class indices).")
    else:
        y = y.to(device=device, dtype=dtype)
    X = X.to(device=device, dtype=dtype)
    if loss == "cross_entropy":
        with torch.no_grad(), eval_mode(model):
            _check_logits(model(X[:1]), int(y.max()))
    else:
        with torch.no_grad(), eval_mode(model):
            out = model(X[:1])
        require(
            out.numel() == y[:1].numel(),
            f"mse loss: model outputs have shape {tuple(out.shape[1:])} per example but "
            f"targets have {tuple(y.shape[1:])}; make the model's output size match the targets.",
        )
    # The one training loop of tdakit is the recipe's; the recipe here only carries the
    # optimiser settings (its model field is unused: we train the model we were given).
    recipe = TrainingRecipe(
        loss=loss,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        epochs=epochs,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
    )
    keep = torch.ones(len(X), dtype=torch.bool)
    run = train_loop(
        recipe,
        model,
        X,
        y,
        keep,
        batch_seed=seed,
        downweight=None,
        epsilon=0.0,
        record_at=[],
        record_unit="epoch",
        measure=None,
        progress=progress,
    )
    return TrainResult(model, run.losses, run.checkpoints, run.checkpoint_lrs)
