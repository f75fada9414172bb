"""Seed ensembles: the same recipe trained under several seeds (METHODS.md §4).

The initialisation seed and the batch-order seed are separate knobs: ``vary="init"`` keeps
the batch order fixed, ``vary="batch"`` keeps the initialisation fixed, ``vary="both"``
changes both. Optionally the last ``K`` checkpoints of each run are kept as extra samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tdakit.data.sources import DataLike, to_tensors
from tdakit.errors import require
from tdakit.execution import Executor, Job
from tdakit.groundtruth.jobs import continue_state, prepare, train_states
from tdakit.training.recipe import TrainingRecipe, as_recipe

__all__ = ["VARY", "Ensemble", "ensemble_seeds", "further_samples", "seed_ensemble"]

VARY = ("both", "init", "batch")


@dataclass
class Ensemble:
    """Trained state dicts (CPU) with their ``(init_seed, batch_seed)``.

    ``checkpoints[s]`` holds the last ``keep_last`` checkpoints of run ``s`` (oldest first;
    the final one equals ``states[s]`` when checkpoints are taken every epoch) and
    ``checkpoint_lrs[s]`` their learning rates.
    """

    states: list[dict[str, torch.Tensor]]
    seeds: list[tuple[int, int]]
    checkpoints: list[list[dict[str, torch.Tensor]]] = field(default_factory=list)
    checkpoint_lrs: list[list[float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def models(self, recipe: TrainingRecipe, train: DataLike) -> list[nn.Module]:
        """The members as modules (eval mode, on the training data's device and dtype)."""
        X, y = to_tensors(train, "train")
        return [recipe.materialise(0, X, y, state).eval() for state in self.states]


def ensemble_seeds(n_models: int, vary: str = "both", seed: int = 0) -> list[tuple[int, int]]:
    """``(init_seed, batch_seed)`` of each member: the varied knob(s) run ``seed + s``."""
    require(vary in VARY, f"vary must be one of {VARY}, got {vary!r}.")
    require(n_models >= 1, f"n_models must be >= 1, got {n_models}.")
    return [
        (seed + s if vary != "batch" else seed, seed + s if vary != "init" else seed)
        for s in range(n_models)
    ]


def seed_ensemble(
    recipe: TrainingRecipe,
    train: DataLike,
    *,
    n_models: int = 5,
    vary: str = "both",
    seed: int = 0,
    keep_last: int = 0,
    pairs: list[tuple[int, int]] | None = None,
    executor: Executor | None = None,
) -> Ensemble:
    """Train ``n_models`` models varying the init seed, the batch seed or both.

    ``keep_last=K`` also keeps the last ``K`` checkpoints of every run (taken every
    ``recipe.checkpoint_every`` epochs, every epoch when that is unset). ``pairs`` gives
    the ``(init_seed, batch_seed)`` of every member explicitly instead (e.g. a full grid).
    """
    require(keep_last >= 0, f"keep_last must be >= 0, got {keep_last}.")
    recipe = as_recipe(recipe)
    require(
        not keep_last or isinstance(recipe, TrainingRecipe),
        "keep_last needs a TrainingRecipe (a training function returns only the final model).",
    )
    executor = executor or Executor()
    data = prepare(train, None, None)
    if keep_last and recipe.checkpoint_every is None:
        recipe = recipe.replace(checkpoint_every=1)
    seeds = (
        ensemble_seeds(n_models, vary, seed)
        if pairs is None
        else [(int(i), int(b)) for i, b in pairs]
    )
    jobs = [
        Job(
            train_states,
            (recipe, data.X, data.y),
            {
                "init_seed": i,
                "batch_seed": b,
                "keep_last": keep_last,
                "device": data.device,
            },
            name=f"ensemble init {i} batch {b}",
            describe={
                "recipe": recipe,
                "seeds": [i, b],
                "keep_last": keep_last,
                **data.description,
            },
        )
        for i, b in seeds
    ]
    out = executor.run(jobs, desc="seed ensemble")
    return Ensemble(
        states=[o["state"] for o in out],
        seeds=seeds,
        checkpoints=[o["checkpoints"] for o in out],
        checkpoint_lrs=[o["checkpoint_lrs"] for o in out],
        config={
            "n_models": len(seeds),
            "vary": vary if pairs is None else "pairs",
            "seed": seed,
            "keep_last": keep_last,
        },
    )


def further_samples(
    recipe: TrainingRecipe,
    model: nn.Module | dict[str, torch.Tensor],
    train: DataLike,
    *,
    seeds: list[int],
    steps: int = 1,
    unit: str = "epoch",
    lr_scale: float = 0.1,
    executor: Executor | None = None,
) -> list[dict[str, torch.Tensor]]:
    """States after ``steps`` epochs (or steps) of further training from the final
    ``model``, one per batch-order seed, at ``lr_scale`` times the recipe's rate."""
    require(unit in ("step", "epoch"), f"unit must be 'step' or 'epoch', got {unit!r}.")
    require(recipe.optimizer != "lbfgs", "Further training takes first-order steps (sgd/adam).")
    executor = executor or Executor()
    data = prepare(train, None, None)
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    state = {k: v.detach().cpu() for k, v in state.items()}
    further = recipe.replace(
        lr=recipe.lr * lr_scale,
        schedule="constant",
        checkpoint_every=None,
        steps=steps if unit == "step" else None,
        epochs=steps if unit == "epoch" else recipe.epochs,
    )
    jobs = [
        Job(
            continue_state,
            (further, state, data.X, data.y),
            {"batch_seed": s, "device": data.device},
            name=f"further seed {s}",
            describe={"recipe": further, "state": state, "seed": s, **data.description},
        )
        for s in seeds
    ]
    return executor.run(jobs, desc="further-training samples")
