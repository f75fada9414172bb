"""The training recipe: how to (re)train a model on a subset of the data with given seeds.

A :class:`TrainingRecipe` is a small picklable value (it travels to worker processes and
Ray workers). Its contract, relied on by every oracle and by other tdakit modules::

    model = recipe.train(X, y, indices=None, init_seed=0, batch_seed=0)  # eval mode

The initialisation seed and the batch-order seed are separate knobs. Batch order is paired
across subsets: each epoch draws one permutation of *all* ``len(X)`` positions and keeps the
positions in ``indices`` in that order, so a run without ``z_i`` sees the full run's batch
order with ``i`` deleted (see :func:`tdakit.training.loop.epoch_batches`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tdakit.data.sources import to_tensors
from tdakit.errors import ConfigError, require
from tdakit.fingerprints import describe_callable
from tdakit.losses import LOSSES
from tdakit.task import load_weights
from tdakit.training.loop import TrainRun, train_loop

__all__ = ["OPTIMIZERS", "SCHEDULES", "FunctionRecipe", "TrainRun", "TrainingRecipe", "as_recipe"]

OPTIMIZERS = ("sgd", "adam", "lbfgs")
SCHEDULES = ("constant", "linear", "cosine")

ModelFactory = Callable[[int], nn.Module]


def _check(value: Any, name: str, low: float, *, integer: bool = False, strict: bool = False):
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    kind = "integer" if integer else "number"
    require(ok, f"{name} must be a finite {kind} {'>' if strict else '>='} {low}, got {value!r}.")


@dataclass(frozen=True)
class TrainingRecipe:
    """How to train a model from scratch (or continue training it).

    Args:
        model: a reference model name for :func:`tdakit.models.build_model` (``"mlp"``,
            ``"linear"``, ``"lenet"``, ``"resnet9"``), or a picklable callable
            ``factory(init_seed) -> nn.Module`` (a module-level function or
            ``functools.partial``; it runs inside a forked RNG seeded with ``init_seed``).
        model_kwargs: extra options for ``build_model`` (e.g. ``{"hidden": (64,)}``).
        in_shape, num_classes: model input shape / number of outputs for a named model;
            ``None`` infers them from the *full* training data (``X.shape[1:]``; the largest
            label + 1 for cross-entropy, the target width for mse).
        loss: ``"cross_entropy"`` or ``"mse"`` (``0.5 * ||f - y||^2``, as in :class:`tdakit.Task`).
            Each step minimises the batch mean of the per-example loss plus
            ``weight_decay / 2 * ||theta||^2``.
        optimizer: ``"sgd"`` (with ``momentum``), ``"adam"`` or ``"lbfgs"`` (full-batch
            quasi-Newton, ``lbfgs_iters`` iterations per batch; use it to train convex
            models to convergence).
        lr, momentum, weight_decay: optimiser settings.
        epochs: passes over the data; ignored when ``steps`` is set.
        steps: train for exactly this many optimiser steps instead (epochs continue
            across the boundary with a fresh permutation each).
        batch_size: examples per step (the last batch of an epoch may be smaller).
        schedule: learning-rate schedule over all steps: ``"constant"``, ``"linear"``
            (to 0) or ``"cosine"`` (to 0).
        checkpoint_every: keep a state-dict copy after every k-th epoch (for TracIn,
            ensembles' last-K checkpoints).
    """

    model: str | ModelFactory = "mlp"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    in_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cross_entropy"
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 20
    steps: int | None = None
    batch_size: int = 64
    schedule: str = "constant"
    checkpoint_every: int | None = None
    lbfgs_iters: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.model, str):
            from tdakit.models import MODELS

            require(
                self.model.lower() in MODELS,
                f"Unknown model {self.model!r}; use one of {', '.join(MODELS)} or a picklable "
                "callable factory(init_seed) -> nn.Module.",
            )
        else:
            require(
                callable(self.model),
                "model must be a reference model name or a callable factory(init_seed).",
            )
            _check_picklable(self.model, "model factory")
        require(
            self.loss in LOSSES or callable(self.loss),
            f"Unknown loss {self.loss!r}; use one of {tuple(LOSSES)} or a picklable callable "
            "loss(outputs, targets) -> [batch].",
        )
        if callable(self.loss):
            _check_picklable(self.loss, "loss function")
        require(
            self.optimizer in OPTIMIZERS,
            f"Unknown optimizer {self.optimizer!r}; use one of {OPTIMIZERS}.",
        )
        require(
            self.schedule in SCHEDULES,
            f"Unknown schedule {self.schedule!r}; use one of {SCHEDULES}.",
        )
        _check(self.lr, "lr", 0, strict=True)
        _check(self.momentum, "momentum", 0)
        require(self.momentum < 1, f"momentum must be < 1, got {self.momentum}.")
        _check(self.weight_decay, "weight_decay", 0)
        _check(self.epochs, "epochs", 1, integer=True)
        _check(self.batch_size, "batch_size", 1, integer=True)
        _check(self.lbfgs_iters, "lbfgs_iters", 1, integer=True)
        if self.steps is not None:
            _check(self.steps, "steps", 1, integer=True)
        if self.checkpoint_every is not None:
            _check(self.checkpoint_every, "checkpoint_every", 1, integer=True)
        if self.num_classes is not None:
            _check(self.num_classes, "num_classes", 1, integer=True)
        if self.in_shape is not None:
            object.__setattr__(self, "in_shape", tuple(int(s) for s in self.in_shape))
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))

    def __hash__(self) -> int:
        return hash(json.dumps(self.config(), sort_keys=True, default=str))

    # --- description -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """A JSON-able description of the recipe (part of every oracle's cache key).

        A callable model factory is described by its qualified name: change the name (or
        the cache directory) when you change what the factory builds.
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["model"] = self.model if isinstance(self.model, str) else describe_callable(self.model)
        out["model_kwargs"] = {k: repr(v) for k, v in sorted(self.model_kwargs.items())}
        out["in_shape"] = None if self.in_shape is None else list(self.in_shape)
        out["loss"] = self.loss if isinstance(self.loss, str) else describe_callable(self.loss)
        return out

    def replace(self, **changes: Any) -> TrainingRecipe:
        """A copy with some fields changed (validated again)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        require(not unknown, f"Unknown recipe field(s) {unknown}; valid fields: {sorted(names)}.")
        return dataclasses.replace(self, **changes)

    # --- models ----------------------------------------------------------------------------
    def build(
        self, init_seed: int = 0, X: torch.Tensor | None = None, y: torch.Tensor | None = None
    ) -> nn.Module:
        """A freshly initialised model from ``init_seed`` (on the CPU, default dtype)."""
        _check(init_seed, "init_seed", 0, integer=True)
        if not isinstance(self.model, str):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                model = self.model(init_seed)
            require(
                isinstance(model, nn.Module),
                f"The model factory returned {type(model).__name__}, not an nn.Module.",
            )
            return model
        from tdakit.models import build_model

        in_shape, outputs = self.in_shape, self.num_classes
        if in_shape is None or outputs is None:
            require(
                X is not None and y is not None,
                "Pass in_shape and num_classes to the recipe, or training data to build().",
            )
            assert X is not None and y is not None
            in_shape = in_shape or tuple(X.shape[1:])
            outputs = outputs or _output_width(y, self.loss)
        return build_model(self.model, in_shape, outputs, seed=init_seed, **self.model_kwargs)

    def materialise(
        self,
        init_seed: int,
        X: torch.Tensor,
        y: torch.Tensor,
        state: Mapping[str, torch.Tensor] | nn.Module | None = None,
    ) -> nn.Module:
        """A model built from ``init_seed`` (then loaded with ``state`` if given), moved to
        ``X``'s device (and dtype, for floating inputs)."""
        model = self.build(init_seed, X, y)
        if state is not None:
            what = "The state does not fit the recipe's model"
            load_weights(model, state, what, "Pass a state dict of a model built by this recipe.")
        model = model.to(device=X.device)
        return model.to(dtype=X.dtype) if X.is_floating_point() else model

    # --- training --------------------------------------------------------------------------
    def train(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        *,
        indices: Sequence[int] | torch.Tensor | None = None,
        init_seed: int = 0,
        batch_seed: int = 0,
        **kw: Any,
    ) -> nn.Module:
        """Train on ``X[indices]`` (all when ``None``); the trained model in eval mode on
        ``X``'s device (and dtype, for floating inputs). ``kw`` goes to :meth:`run`."""
        run = self.run(X, y, indices=indices, init_seed=init_seed, batch_seed=batch_seed, **kw)
        return run.model

    def run(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        *,
        indices: Sequence[int] | torch.Tensor | None = None,
        init_seed: int = 0,
        batch_seed: int = 0,
        init_state: Mapping[str, torch.Tensor] | nn.Module | None = None,
        downweight: Sequence[int] | torch.Tensor | None = None,
        epsilon: float | None = None,
        record_at: Sequence[int] = (),
        record_unit: str = "step",
        measure: Callable[[nn.Module], Any] | None = None,
        progress: bool = False,
    ) -> TrainRun:
        """Train and return a :class:`TrainRun` (model, per-epoch losses, checkpoints, records).

        Args:
            indices: positions of ``X`` to train on (default all); batches are paired
                across subsets (the same permutation of all positions, filtered).
            init_seed: seeds the model's initialisation only.
            batch_seed: seeds the batch order (and dropout-style randomness) only.
            init_state: continue from these parameters instead of a fresh model.
            downweight: positions whose loss is subtracted, times ``epsilon``
                (default ``1 / len(indices)``), from every step's loss while the batches stay
                unchanged: the ``epsilon``-down-weighting leave-out of further training.
            record_at: amounts of training (in ``record_unit``: ``"step"`` or ``"epoch"``)
                after which ``measure(model)`` is called (``0`` = before training), in eval
                mode without gradients; results in ``TrainRun.records`` in this order.
        """
        X, y = to_tensors((X, y), "train")
        n = len(X)
        keep = _mask(indices, n, "indices")
        require(bool(keep.any()), "indices is empty: train on at least one example.")
        model = self.materialise(init_seed, X, y, init_state)
        dw = None
        if downweight is not None:
            dw = torch.nonzero(_mask(downweight, n, "downweight")).squeeze(1).to(X.device)
        eps = 1.0 / int(keep.sum()) if epsilon is None else float(epsilon)
        require(record_unit in ("step", "epoch"), "record_unit must be 'step' or 'epoch'.")
        return train_loop(
            self,
            model,
            X,
            _targets(y, self.loss, X),
            keep,
            batch_seed=batch_seed,
            downweight=dw,
            epsilon=eps,
            record_at=[int(t) for t in record_at],
            record_unit=record_unit,
            measure=measure,
            progress=progress,
        )


def _check_picklable(fn: Any, what: str) -> None:
    try:
        pickle.dumps(fn)
    except Exception as err:
        raise ConfigError(
            f"The {what} {fn!r} cannot be pickled ({err}), so it cannot be sent to worker "
            "processes; use a module-level function or functools.partial instead of a lambda "
            "or closure."
        ) from err


def _output_width(y: torch.Tensor, loss: Any) -> int:
    if loss == "cross_entropy" or (callable(loss) and not y.is_floating_point()):
        require(
            not y.is_floating_point(),
            "cross_entropy needs integer labels; convert y with y.long().",
        )
        return int(y.max()) + 1
    return 1 if y.ndim == 1 else int(y[0].numel())


def _targets(y: torch.Tensor, loss: Any, X: torch.Tensor) -> torch.Tensor:
    if loss == "cross_entropy":
        require(
            not y.is_floating_point() and y.ndim == 1,
            f"cross_entropy needs integer labels [n], got {y.dtype} {tuple(y.shape)}.",
        )
        return y.to(device=X.device, dtype=torch.long)
    if callable(loss) and not y.is_floating_point():
        return y.to(device=X.device)  # integer labels stay labels for a custom loss
    dtype = X.dtype if X.is_floating_point() else torch.get_default_dtype()
    return y.to(device=X.device, dtype=dtype)


def _mask(indices: Sequence[int] | torch.Tensor | None, n: int, name: str) -> torch.Tensor:
    """A CPU bool mask over ``n`` positions from indices (or a bool mask)."""
    if indices is None:
        return torch.ones(n, dtype=torch.bool)
    idx = torch.as_tensor(indices).cpu()
    if idx.dtype == torch.bool:
        require(idx.shape == (n,), f"A boolean {name} mask must have shape [{n}].")
        return idx.clone()
    require(
        idx.ndim <= 1 and not idx.is_floating_point(),
        f"{name} must be a 1-D list of integer positions or a bool mask, got {idx.dtype}.",
    )
    idx = idx.reshape(-1).long()
    if len(idx):
        require(
            int(idx.min()) >= 0 and int(idx.max()) < n,
            f"{name} must lie in [0, {n}); got values in [{int(idx.min())}, {int(idx.max())}].",
        )
    mask = torch.zeros(n, dtype=torch.bool)
    mask[idx] = True
    require(int(mask.sum()) == len(idx), f"{name} contains repeated positions; pass each once.")
    return mask


class FunctionRecipe:
    """A user's own training function as a recipe.

    ``fn(X, y, indices, init_seed, batch_seed) -> nn.Module`` trains a fresh model on
    ``X[indices], y[indices]``; ``indices`` is always a 1-D ``LongTensor`` of positions (all of
    them when training on the full set). Seeds are plain ints; the function should use them
    so that the same seeds give the same model. ``loss`` (a name or callable) is only needed
    when an oracle measures the query loss without a ``task=``.
    """

    def __init__(self, fn: Callable[..., nn.Module], loss: Any = None) -> None:
        require(callable(fn), f"A training function must be callable, got {type(fn).__name__}.")
        self.fn, self.loss = fn, loss

    def train(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        *,
        indices: Sequence[int] | torch.Tensor | None = None,
        init_seed: int = 0,
        batch_seed: int = 0,
    ) -> nn.Module:
        keep = _mask(indices, len(X), "indices")
        positions = keep.nonzero().squeeze(1)
        model = self.fn(X, y, positions, int(init_seed), int(batch_seed))
        require(
            isinstance(model, nn.Module),
            f"The training function {getattr(self.fn, '__name__', self.fn)!r} returned "
            f"{type(model).__name__}; it must return the trained nn.Module.",
        )
        return model.eval()

    def config(self) -> dict[str, Any]:
        loss = (
            self.loss
            if self.loss is None or isinstance(self.loss, str)
            else describe_callable(self.loss)
        )
        return {"function": describe_callable(self.fn), "loss": loss}

    def __repr__(self) -> str:
        return f"FunctionRecipe({getattr(self.fn, '__qualname__', self.fn)!r})"


def as_recipe(recipe: Any) -> Any:
    """A :class:`TrainingRecipe` or any object with ``train(X, y, *, indices, init_seed,
    batch_seed)`` as it is; a plain function as a :class:`FunctionRecipe`."""
    if callable(getattr(recipe, "train", None)):
        return recipe
    if callable(recipe):
        return FunctionRecipe(recipe)
    raise ConfigError(
        f"recipe must be a tdakit TrainingRecipe, an object with train(X, y, *, indices, "
        f"init_seed, batch_seed), or a function train(X, y, indices, init_seed, batch_seed) "
        f"-> model; got {type(recipe).__name__}."
    )
