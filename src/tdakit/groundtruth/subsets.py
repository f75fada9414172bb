"""Subset retraining for the linear datamodeling score (METHODS.md §3).

``M`` random subsets of size ``round(fraction * N)``; ``R`` models per subset, each with its
own explicit seed; the outcome per subset is the query objective (loss-like: the loss,
``-margin`` or ``-logit``) averaged over the ``R`` models. With tdakit's sign the LDS
correlates ``sum_{i in S_m} S[q, i]`` with ``-outcome`` (``tdakit.metrics.lds`` does that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tdakit.data.sources import DataLike
from tdakit.errors import require
from tdakit.execution import Executor, Job
from tdakit.groundtruth.jobs import make_measure, prepare, train_and_measure
from tdakit.task import Task
from tdakit.training.recipe import as_recipe

__all__ = ["SubsetResult", "subset_masks", "subset_retraining"]


@dataclass
class SubsetResult:
    """``masks`` ``[M, N]`` bool, ``losses`` ``[M, n_query]`` (mean over the R models),
    ``all_losses`` ``[M, R, n_query]``, ``seeds`` ``[M, R]`` (init = batch seed)."""

    masks: torch.Tensor
    losses: torch.Tensor
    all_losses: torch.Tensor
    seeds: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)


def subset_masks(n: int, n_subsets: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """``[n_subsets, n]`` bool masks, each with exactly ``round(fraction * n)`` members."""
    require(0 < fraction < 1, f"fraction must be in (0, 1), got {fraction}.")
    require(n_subsets >= 1, f"n_subsets must be >= 1, got {n_subsets}.")
    size = round(fraction * n)
    require(1 <= size < n, f"fraction={fraction} of {n} examples gives an empty or full subset.")
    generator = torch.Generator().manual_seed(int(seed))
    masks = torch.zeros(n_subsets, n, dtype=torch.bool)
    for m in range(n_subsets):
        masks[m, torch.randperm(n, generator=generator)[:size]] = True
    return masks


def subset_retraining(
    recipe: Any,
    train: DataLike,
    queries: DataLike,
    *,
    n_subsets: int = 100,
    fraction: float = 0.5,
    n_models: int = 1,
    seed: int = 0,
    model_seed: int = 0,
    measurement: str | int | None = None,
    task: Task | None = None,
    executor: Executor | None = None,
) -> SubsetResult:
    """Train ``n_models`` models on each of ``n_subsets`` random subsets; record query losses.

    Subsets are drawn with ``seed``; model ``r`` of subset ``m`` uses init and batch seed
    ``model_seed + m * n_models + r``. Defaults follow METHODS.md (M = 100, alpha = 0.5, R = 1).
    """
    require(n_models >= 1, f"n_models must be >= 1, got {n_models}.")
    executor = executor or Executor()
    recipe = as_recipe(recipe)
    measure = make_measure(recipe, measurement, task)
    data = prepare(train, queries, measure)
    masks = subset_masks(data.n, n_subsets, fraction, seed)
    seeds = model_seed + torch.arange(n_subsets * n_models).reshape(n_subsets, n_models)
    jobs = [
        Job(
            train_and_measure,
            (recipe, data.X, data.y, data.Xq, data.yq),
            {
                "keep": masks[m].nonzero().squeeze(1),
                "init_seed": int(seeds[m, r]),
                "batch_seed": int(seeds[m, r]),
                "measure": measure,
                "device": data.device,
            },
            name=f"subset {m} model {r}",
            describe={
                "recipe": recipe,
                "mask": masks[m],
                "seed": int(seeds[m, r]),
                **data.description,
            },
        )
        for m in range(n_subsets)
        for r in range(n_models)
    ]
    out = torch.stack(executor.run(jobs, desc="subset retraining"))
    all_losses = out.reshape(n_subsets, n_models, -1)
    config = {
        "n_subsets": n_subsets,
        "fraction": fraction,
        "n_models": n_models,
        "seed": seed,
        "model_seed": model_seed,
        **measure.config(),
    }
    return SubsetResult(masks, all_losses.mean(1), all_losses, seeds, config)
