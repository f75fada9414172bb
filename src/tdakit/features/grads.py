"""Per-example gradients with ``torch.func`` (``vmap(grad(...))``), flattened or projected."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.func import grad, vmap
from tqdm.auto import tqdm

from tdakit.errors import TdakitError
from tdakit.features.layers import layer_grads, layer_layout
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
    task: Task, x: torch.Tensor, y: torch.Tensor, objective: Objective = "train"
) -> Params:
    """Gradients of each example's objective: ``{name: [batch, *param.shape]}``.

    ``vmap(grad(...))`` in general; the exact outer-product fast path when every
    attributed parameter belongs to a Linear/Conv2d layer (see :mod:`tdakit.features.layers`).
    """
    layout = layer_layout(task)
    if layout is not None:
        shapes = task.params()
        blocks: Params = {}

        def write(name: str, delta: torch.Tensor, act: torch.Tensor | None) -> None:
            g = delta if act is None else delta.unsqueeze(2) * act.unsqueeze(1)
            blocks[name] = g.reshape(len(x), *shapes[name].shape)

        if layer_grads(task, layout, _batch_objective(task, objective), x, y, write):
            return {n: blocks[n] for n in task.param_names}
    fn = vmap(grad(_objective_fn(task, objective)), in_dims=(None, 0, 0))
    return fn(task.params(), x, y)


def _batch_objective(task: Task, objective: Objective) -> Callable:
    _objective_fn(task, objective)  # validates the name
    return task.losses if objective == "train" else task.query_losses


def flatten_blocks(blocks: Params) -> torch.Tensor:
    """Concatenate per-parameter blocks ``[batch, *shape]`` into ``[batch, P]``."""
    return torch.cat([g.reshape(len(g), -1) for g in blocks.values()], dim=1)


def _check_finite(features: torch.Tensor, start: int) -> None:
    # A row sum is NaN/inf iff the row has a NaN/inf (bar overflow of huge finite values,
    # which is just as unusable); it is ~25x cheaper than isfinite on the whole block.
    row_sums = features.sum(dim=1)
    if not torch.isfinite(row_sums).all():
        bad = start + int((~torch.isfinite(row_sums)).nonzero()[0])
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
    dim = projector.dim if projector is not None else task.num_params
    if out is None:
        out = torch.empty(len(X), dim, dtype=task.dtype, device=task.device)
    it = batches(X, y, batch_size, task.device, task.dtype)
    for start, stop, xb, yb in tqdm(
        it, total=-(-len(X) // batch_size), desc=desc, disable=not progress, leave=False
    ):
        rows = out[start:stop]
        if projector is not None:
            rows.copy_(projector.project(per_example_grads(task, xb, yb, objective)))
        elif not _layers_into(task, objective, xb, yb, rows):
            _write_flat(per_example_grads(task, xb, yb, objective), rows)
        _check_finite(rows, start)
    return out


def _column_views(task: Task, out: torch.Tensor) -> dict[str, torch.Tensor]:
    views, offset = {}, 0
    for name, p in task.params().items():
        views[name] = out[:, offset : offset + p.numel()]
        offset += p.numel()
    return views


def _layers_into(
    task: Task, objective: Objective, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor
) -> bool:
    """Layer fast path writing per-example gradients straight into ``out``'s columns."""
    layout = layer_layout(task)
    if layout is None:
        return False
    views = _column_views(task, out)

    def write(name: str, delta: torch.Tensor, act: torch.Tensor | None) -> None:
        if act is None:
            views[name].copy_(delta.reshape(len(x), -1))
        else:
            target = views[name].view(len(x), delta.shape[1], act.shape[1])
            torch.mul(delta.unsqueeze(2), act.unsqueeze(1), out=target)

    return layer_grads(task, layout, _batch_objective(task, objective), x, y, write)


def _write_flat(blocks: Params, out: torch.Tensor) -> None:
    """Copy blocks into consecutive column ranges of ``out`` (no intermediate concat)."""
    offset = 0
    for g in blocks.values():
        width = g[0].numel()
        out[:, offset : offset + width] = g.reshape(len(g), width)
        offset += width
