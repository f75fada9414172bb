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
from tdakit.groundtruth.jobs import prepare, train_states
from tdakit.training.recipe import TrainingRecipe

__all__ = ["VARY", "Ensemble", "ensemble_seeds", "seed_ensemble"]

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
    executor: Executor | None = None,
) -> Ensemble:
    """Train ``n_models`` models varying the init seed, the batch seed or both.

    ``keep_last=K`` also keeps the last ``K`` checkpoints of every run (taken every
    ``recipe.checkpoint_every`` epochs, every epoch when that is unset).
    """
    require(keep_last >= 0, f"keep_last must be >= 0, got {keep_last}.")
    executor = executor or Executor()
    data = prepare(train, None, None)
    if keep_last and recipe.checkpoint_every is None:
        recipe = recipe.replace(checkpoint_every=1)
    seeds = ensemble_seeds(n_models, vary, seed)
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
        config={"n_models": n_models, "vary": vary, "seed": seed, "keep_last": keep_last},
    )
