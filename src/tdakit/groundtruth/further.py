"""Further training from the final model: the final-model-only gold standard (METHODS.md §3).

    a_i(z_q, t) = mean_xi [ m(z_q; theta_f + dtheta_t(D minus i, xi))
                            - m(z_q; theta_f + dtheta_t(D, xi)) ]

``dtheta_t`` is ``t`` steps (or epochs) of training from ``theta_f`` with a fresh optimiser at
a learning rate below the original (``lr_scale``, default 0.1). Every left-out run is
paired with the full run of the same seed ``xi`` (the same batch order). Mechanisms:

- ``"drop"``: ``z_i`` is deleted from each epoch's permutation;
- ``"downweight"``: the batches stay as in the full run and ``epsilon * loss(z_i)``
  (default ``epsilon = 1 / N``) is subtracted from every step's loss.

Positive = removing ``z_i`` raises the query's loss = helpful, like every method's score.
To first order, one full-batch gradient step with ``"downweight"`` gives
``a_i = lr / N * g_q . g_i`` (Grad-Dot times lr / N).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tdakit.data.sources import DataLike
from tdakit.errors import require
from tdakit.execution import Executor, Job, Shared
from tdakit.groundtruth.jobs import continue_and_measure, make_measure, positions, prepare
from tdakit.task import Task
from tdakit.training.recipe import TrainingRecipe

__all__ = ["MECHANISMS", "FurtherResult", "further_training"]

MECHANISMS = ("drop", "downweight")


@dataclass
class FurtherResult:
    """``scores`` ``[len(t), n_query, K]`` (mean over seeds; positive = helpful),
    ``per_seed`` ``[S, len(t), n_query, K]``, the left-out positions ``removed`` ``[K]``."""

    scores: torch.Tensor
    t: list[int]
    unit: str
    removed: torch.Tensor
    per_seed: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)


def further_training(
    recipe: TrainingRecipe,
    model: nn.Module | Mapping[str, torch.Tensor],
    train: DataLike,
    queries: DataLike,
    *,
    removed: Sequence[int] | torch.Tensor | None = None,
    t: Sequence[int] = (1,),
    unit: str = "epoch",
    mechanism: str = "drop",
    seeds: int | Sequence[int] = 5,
    lr_scale: float = 0.1,
    lr: float | None = None,
    epsilon: float | None = None,
    centre: bool = False,
    measurement: str | int | None = None,
    task: Task | None = None,
    executor: Executor | None = None,
) -> FurtherResult:
    """Attribute by sensitivity to further training from the final model ``model``.

    Args:
        recipe: the original recipe (optimizer, batch size, weight decay are reused; the
            learning rate is ``lr`` or ``lr_scale * recipe.lr``, constant).
        model: the final model (or its state dict), of the recipe's architecture.
        removed: the ``K`` training positions to leave out (default all).
        t: amounts of further training at which to measure (in ``unit``: ``"step"`` or
            ``"epoch"``); the runs last ``max(t)``.
        mechanism: ``"drop"`` or ``"downweight"`` (see the module docstring).
        seeds: number of seeds (``0..S-1``) or the seeds themselves.
        centre: subtract the mean over the ``K`` left-out examples (per query, seed, t).
    """
    require(mechanism in MECHANISMS, f"mechanism must be one of {MECHANISMS}, got {mechanism!r}.")
    require(unit in ("step", "epoch"), f"unit must be 'step' or 'epoch', got {unit!r}.")
    ts = [int(v) for v in t]
    require(len(ts) > 0 and min(ts) >= 1, f"t must be amounts of training >= 1, got {list(t)}.")
    require(
        isinstance(recipe, TrainingRecipe),
        "further_training continues the original optimiser, so it needs a "
        "tdakit.TrainingRecipe (a plain training function cannot be continued).",
    )
    require(
        recipe.optimizer != "lbfgs",
        "Further training takes small first-order steps: use an sgd or adam recipe.",
    )
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    require(len(seed_list) > 0, "seeds must give at least one seed.")
    executor = executor or Executor()
    measure = make_measure(recipe, measurement, task)
    data = prepare(train, queries, measure)
    idx = positions(removed, data.n, "removed")
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    state = Shared({k: v.detach().cpu() for k, v in state.items()})
    rate = float(lr) if lr is not None else recipe.lr * lr_scale
    further = recipe.replace(
        lr=rate,
        schedule="constant",
        checkpoint_every=None,
        steps=max(ts) if unit == "step" else None,
        epochs=max(ts) if unit == "epoch" else recipe.epochs,
    )
    common = {"recipe": further, "state": state, "t": ts, "unit": unit, **data.description}

    def job(seed: int, left: int | None) -> Job:
        drop = left if mechanism == "drop" else None
        down = left if mechanism == "downweight" else None
        return Job(
            continue_and_measure,
            (further, state, data.X, data.y, data.Xq, data.yq),
            {
                "drop": drop,
                "downweight": down,
                "epsilon": epsilon,
                "batch_seed": seed,
                "record_at": ts,
                "unit": unit,
                "measure": measure,
                "device": data.device,
            },
            name=f"further seed {seed} " + ("full" if left is None else f"{mechanism} {left}"),
            describe={**common, "seed": seed, "drop": drop, "downweight": down, "epsilon": epsilon},
        )

    jobs = [job(s, left) for s in seed_list for left in [None, *map(int, idx)]]
    out = torch.stack(executor.run(jobs, desc="further training"))
    out = out.reshape(len(seed_list), len(idx) + 1, len(ts), -1)  # [S, 1 + K, T, n_query]
    per_seed = (out[:, 1:] - out[:, :1]).permute(0, 2, 3, 1)  # [S, T, n_query, K]
    if centre:
        per_seed = per_seed - per_seed.mean(-1, keepdim=True)
    config = {
        "mechanism": mechanism,
        "seeds": seed_list,
        "lr": rate,
        "epsilon": epsilon,
        "centre": centre,
        **measure.config(),
    }
    return FurtherResult(per_seed.mean(0), ts, unit, idx, per_seed, config)
