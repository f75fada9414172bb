"""Leave-one-out retraining (METHODS.md §3), paired by seeds.

``scores[q, k] = m(z_q; theta_{D minus i_k}) - m(z_q; theta_D)`` with ``m`` the task's
loss-like query objective, so a positive score means ``z_{i_k}`` helped the query (removing
it raised the query's loss), the sign of every attribution method. Each retraining uses the
same initialisation seed as the full run and the full run's batch order with ``i_k``
deleted, so the difference is not drowned in seed noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tdakit.data.sources import DataLike
from tdakit.execution import Executor, Job
from tdakit.groundtruth.jobs import make_measure, positions, prepare, train_and_measure
from tdakit.task import Task
from tdakit.training.recipe import as_recipe

__all__ = ["LOOResult", "leave_one_out"]


@dataclass
class LOOResult:
    """``scores`` ``[n_query, K]`` for the removed positions ``removed`` ``[K]``;
    ``base_losses`` ``[n_query]`` of the full run, ``losses`` ``[K, n_query]`` retrained."""

    scores: torch.Tensor
    removed: torch.Tensor
    base_losses: torch.Tensor
    losses: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)


def leave_one_out(
    recipe: Any,
    train: DataLike,
    queries: DataLike,
    *,
    removed: Sequence[int] | torch.Tensor | None = None,
    init_seed: int = 0,
    batch_seed: int = 0,
    measurement: str | int | None = None,
    task: Task | None = None,
    executor: Executor | None = None,
) -> LOOResult:
    """Retrain without each example in ``removed`` (default: every training example).

    Args:
        recipe: how to train from scratch: a :class:`~tdakit.training.TrainingRecipe`, or a
            function ``train(X, y, indices, init_seed, batch_seed) -> model``.
        train, queries: ``(X, y)`` tuples, Datasets or DataLoaders (``shuffle=False``).
        removed: training positions to leave out, one retraining each.
        init_seed, batch_seed: the seeds shared by the full and every left-out run.
        measurement: ``"loss"`` (default), ``"margin"`` or a logit index (loss-like).
        task: measure the queries with this Task's loss, measurement and hooks instead
            (custom losses get ground truth too).
        executor: where the ``K + 1`` trainings run (default: 2 local processes, no cache).
    """
    executor = executor or Executor()
    recipe = as_recipe(recipe)
    measure = make_measure(recipe, measurement, task)
    data = prepare(train, queries, measure)
    idx = positions(removed, data.n, "removed")
    common = {"recipe": recipe, "seeds": [init_seed, batch_seed], **data.description}

    def job(drop: int | None) -> Job:
        keep = None
        if drop is not None:
            keep = torch.cat([torch.arange(drop), torch.arange(drop + 1, data.n)])
        return Job(
            train_and_measure,
            (recipe, data.X, data.y, data.Xq, data.yq),
            {
                "keep": keep,
                "init_seed": init_seed,
                "batch_seed": batch_seed,
                "measure": measure,
                "device": data.device,
            },
            name="loo full" if drop is None else f"loo without {drop}",
            describe={**common, "leave_out": drop},
        )

    jobs = [job(None)] + [job(int(i)) for i in idx]
    out = executor.run(jobs, desc="leave-one-out")
    base, losses = out[0], torch.stack(out[1:])
    config = {"init_seed": init_seed, "batch_seed": batch_seed, **measure.config()}
    return LOOResult((losses - base).T.contiguous(), idx, base, losses, config)
