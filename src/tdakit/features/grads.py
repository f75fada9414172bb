"""Per-example gradients with ``torch.func`` (``vmap(grad(...))``), flattened or projected."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.func import grad, vmap
from tqdm.auto import tqdm

from tdakit.errors import TdakitError
from tdakit.features.projection import Projector
from tdakit.inputs import batches, check_float_dtype
from tdakit.task import Params, Task

Objective = Literal["train", "query"]


def _objective_fn(task: Task, objective: Objective) -> Callable:
    if objective not in ("train", "query"):
        raise TdakitError(f"objective must be 'train' or 'query', got {objective!r}.")
    per_batch = task.losses if objective == "train" else task.query_losses

    def single(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_batch(params, x.unsqueeze(0), y.unsqueeze(0)).squeeze(0)

    return single


def per_example_grads(
    task: Task,
    x: torch.Tensor,
    y: torch.Tensor,
    objective: Objective = "train",
    params: Params | None = None,
) -> Params:
    """Gradients of each example's objective: ``{name: [batch, *param.shape]}``."""
    params = task.params() if params is None else params
    fn = vmap(grad(_objective_fn(task, objective)), in_dims=(None, 0, 0))
    return fn(params, x, y)


def flatten_blocks(blocks: Params) -> torch.Tensor:
    """Concatenate per-parameter blocks ``[batch, *shape]`` into ``[batch, P]``."""
    return torch.cat([g.reshape(len(g), -1) for g in blocks.values()], dim=1)


def _check_finite(features: torch.Tensor, start: int) -> None:
    if not torch.isfinite(features).all():
        bad = start + int((~torch.isfinite(features)).any(1).nonzero()[0])
        raise TdakitError(
            f"Non-finite gradient for example {bad}: the loss or model output is NaN/inf "
            "there. Check that example's input and label, and the model's weights."
        )


def gradient_features(
    task: Task,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    objective: Objective = "train",
    projector: Projector | None = None,
    batch_size: int = 128,
    progress: bool = False,
    desc: str = "gradients",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example gradient features ``[N, d]`` on the task's device, in batches.

    ``d`` is the number of attributed parameters, or ``projector.dim`` when a projector
    is given (applied blockwise per parameter, so no ``[N, P]`` matrix is built).
    """
    check_float_dtype(X, task.dtype, objective)
    params = task.params()
    dim = projector.dim if projector is not None else task.num_params
    if out is None:
        out = torch.empty(len(X), dim, dtype=task.dtype, device=task.device)
    fn = vmap(grad(_objective_fn(task, objective)), in_dims=(None, 0, 0))
    it = batches(X, y, batch_size, task.device, task.dtype)
    for start, stop, xb, yb in tqdm(
        it, total=-(-len(X) // batch_size), desc=desc, disable=not progress, leave=False
    ):
        blocks = fn(params, xb, yb)
        feats = projector.project(blocks) if projector is not None else flatten_blocks(blocks)
        _check_finite(feats, start)
        out[start:stop] = feats
    return out
