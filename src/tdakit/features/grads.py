"""Per-example gradients of the training loss or the query measurement, for one batch.

Three paths compute the same thing; the first that can run is used, decided once per task
and objective and recorded in ``task.gradient_paths`` (``{"train": "layers", ...}``):

- ``"layers"``: every attributed parameter belongs to a Linear, Conv2d, Embedding or
  LayerNorm layer: one backward pass (see :mod:`tdakit.features.layers`);
- ``"vmap"``: ``torch.func.vmap(grad(...))`` over the examples;
- ``"loop"``: one autograd pass per example, for models ``vmap`` cannot run (data-dependent
  control flow such as attention-mask checks); a warning says it is slower.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch.func import grad, vmap

from tdakit.batching import flatten
from tdakit.errors import ConfigError, DataError, NumericalError, TdakitError
from tdakit.features.layers import layer_grads, layer_layout
from tdakit.features.projection import Projector
from tdakit.task import Params, Task

Objective = Literal["train", "query"]
PATHS = ("layers", "vmap", "loop")


def objective_fn(task: Task, objective: Objective | Callable) -> Callable:
    """``(params, inputs, targets) -> [B]``: the training loss, the query measurement, or a
    callable objective (with a ``path_key`` attribute naming it)."""
    if callable(objective):
        return objective
    if objective not in ("train", "query"):
        raise ConfigError(f"objective must be 'train' or 'query', got {objective!r}.")
    return task.losses if objective == "train" else task.query_losses


def _key(objective: Objective | Callable) -> str:
    return getattr(objective, "path_key", "custom") if callable(objective) else objective


def gradient_path(task: Task, objective: Objective | Callable) -> str | None:
    """The path used for ``objective`` so far (``None`` before the first batch)."""
    return getattr(task, "gradient_paths", {}).get(_key(objective))


def _record(task: Task, objective: Objective | Callable, path: str) -> None:
    paths = task.__dict__.setdefault("gradient_paths", {})
    objective = _key(objective)
    if paths.get(objective) != path and path == "loop":
        warnings.warn(
            f"vmap cannot run this model ({type(task.model).__name__}); per-example "
            f"{objective} gradients use one backward pass per example (slower). Attribute "
            "only Linear/Conv2d/Embedding/LayerNorm parameters to use the fast layer path.",
            RuntimeWarning,
            stacklevel=4,
        )
    paths[objective] = path


def per_example_grads(
    task: Task, inputs: Any, targets: torch.Tensor, objective: Objective | Callable = "train"
) -> Params:
    """Gradients of each example's objective: ``{name: [batch, *param.shape]}``."""
    blocks: Params = {}
    shapes = task.params()
    B = len(targets)

    def write(name: str, g: torch.Tensor, act: torch.Tensor | None) -> None:
        g = g if act is None else g.unsqueeze(2) * act.unsqueeze(1)
        blocks[name] = g.reshape(B, *shapes[name].shape)

    if _try_layers(task, objective, inputs, targets, write):
        return {n: blocks[n] for n in task.param_names}
    return _vmap_or_loop(task, objective, inputs, targets)


def _try_layers(task: Task, objective: Objective, inputs, targets, write) -> bool:
    if gradient_path(task, objective) not in (None, "layers"):
        return False
    layout = layer_layout(task)
    if layout is None:
        return False
    try:
        fn, first = objective_fn(task, objective), gradient_path(task, objective) is None
        ok = layer_grads(task, layout, fn, inputs, targets, write, verify=first)
    except (RuntimeError, IndexError):
        check_runs(task, objective, inputs, targets)
        if gradient_path(task, objective) == "layers":
            raise
        ok = False  # e.g. a broadcast the model cannot take: use the general paths
    if ok:
        _record(task, objective, "layers")
    return ok


def _vmap_or_loop(task: Task, objective: Objective, inputs, targets) -> Params:
    fn = objective_fn(task, objective)
    leaves, rebuild = flatten(inputs)
    is_tensor = [isinstance(v, torch.Tensor) for v in leaves]
    batched = [v for v, t in zip(leaves, is_tensor, strict=True) if t]

    def single(params: Params, rows: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        it = iter(rows)
        one = rebuild(
            [next(it).unsqueeze(0) if t else v for v, t in zip(leaves, is_tensor, strict=True)]
        )
        return fn(params, one, target.unsqueeze(0)).squeeze(0)

    params = task.params()
    if gradient_path(task, objective) in (None, "vmap", "layers"):
        try:
            out = vmap(grad(single), in_dims=(None, 0, 0))(params, batched, targets)
        except (RuntimeError, NotImplementedError):
            check_runs(task, objective, inputs, targets)
            if gradient_path(task, objective) == "vmap":
                raise
        else:
            _record(task, objective, "vmap")
            return out
    _record(task, objective, "loop")
    return _loop(single, params, batched, targets)


def check_runs(task: Task, objective: Objective | Callable, inputs, targets) -> None:
    """Raise :class:`DataError` if the objective cannot be evaluated on the batch at all
    (wrong input shapes, say), so that such a batch is reported as bad data instead of
    sending the task down a slower gradient path for good."""
    try:
        with torch.no_grad():
            objective_fn(task, objective)(task.params(), inputs, targets)
    except TdakitError:
        raise
    except Exception as err:
        what = {"train": "training ", "query": "query "}.get(_key(objective), "")
        raise bad_inputs(err, what) from err


def bad_inputs(err: Exception, what: str = "") -> DataError:
    """The error for a model that cannot run on a batch of (``what``) inputs."""
    return DataError(
        f"The model could not run on a batch of {what}inputs ({type(err).__name__}: {err}). "
        "Check their shapes and dtypes: queries must look like the training inputs, and "
        "both like what the model takes (or pass Task(..., batch=fn) to say how a batch "
        "becomes model inputs)."
    )


def _loop(single, params: Params, batched: list[torch.Tensor], targets) -> Params:
    names = list(params)
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    live = {n: p.detach().requires_grad_() for n, p in params.items()}
    for i in range(len(targets)):
        with torch.enable_grad():
            value = single(live, [b[i] for b in batched], targets[i])
            grads = torch.autograd.grad(value, [live[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads, strict=True):
            rows[n].append(torch.zeros_like(live[n]) if g is None else g)
    return {n: torch.stack(rows[n]) for n in names}


def flatten_blocks(blocks: Params) -> torch.Tensor:
    """Concatenate per-parameter blocks ``[batch, *shape]`` into ``[batch, P]``."""
    return torch.cat([g.reshape(len(g), -1) for g in blocks.values()], dim=1)


def check_finite(features: torch.Tensor, start: int) -> None:
    """Raise naming the first example whose feature row holds NaN/inf."""
    # A row sum is NaN/inf iff the row has a NaN/inf (bar overflow of huge finite values,
    # which is just as unusable); it is ~25x cheaper than isfinite on the whole block.
    row_sums = features.sum(dim=1)
    if not torch.isfinite(row_sums).all():
        bad = start + int((~torch.isfinite(row_sums)).nonzero()[0])
        raise NumericalError(
            f"Non-finite gradient for example {bad}: the loss or model output is NaN/inf "
            "there. Check that example's input and label, and the model's weights."
        )


def batch_gradients(
    task: Task,
    inputs: Any,
    targets: torch.Tensor,
    *,
    objective: Objective = "train",
    projector: Projector | None = None,
    out: torch.Tensor | None = None,
    start: int = 0,
) -> torch.Tensor:
    """Per-example gradient features ``[B, d]`` of one batch (``d`` = number of attributed
    parameters, or ``projector.dim``; projections are applied per parameter block, so a
    ``[B, P]`` matrix is never formed). Written into ``out`` when given."""
    B = len(targets)
    dim = projector.dim if projector is not None else task.num_params
    if out is None:
        out = torch.empty(B, dim, dtype=task.dtype, device=task.device)
    if projector is not None:
        out.copy_(projector.project(per_example_grads(task, inputs, targets, objective)))
    elif not _layers_into(task, objective, inputs, targets, out):
        _write_flat(per_example_grads(task, inputs, targets, objective), out)
    check_finite(out, start)
    return out


def _layers_into(task: Task, objective: Objective, inputs, targets, out: torch.Tensor) -> bool:
    """Layer fast path writing per-example gradients straight into ``out``'s columns."""
    views, offset = {}, 0
    for name, p in task.params().items():
        views[name] = out[:, offset : offset + p.numel()]
        offset += p.numel()

    def write(name: str, g: torch.Tensor, act: torch.Tensor | None) -> None:
        if act is None:
            views[name].copy_(g.reshape(len(g), -1))
        else:
            target = views[name].view(len(g), g.shape[1], act.shape[1])
            torch.mul(g.unsqueeze(2), act.unsqueeze(1), out=target)

    return _try_layers(task, objective, inputs, targets, write)


def _write_flat(blocks: Params, out: torch.Tensor) -> None:
    """Copy blocks into consecutive column ranges of ``out`` (no intermediate concat)."""
    offset = 0
    for g in blocks.values():
        width = g[0].numel()
        out[:, offset : offset + width] = g.reshape(len(g), width)
        offset += width
