"""Fast exact per-example gradients for ``nn.Linear`` parameters.

For a linear layer ``o = W a + b`` evaluated per example (eval mode: no batch coupling),
the gradient of example ``i``'s loss is ``delta_i a_i^T`` (weight) and ``delta_i`` (bias),
where ``delta_i = d loss_i / d o_i`` comes from ONE backward pass of the summed loss.
Writing the outer products straight into the feature buffer avoids the ``[B, out, 1] x
[B, 1, in]`` batched matmuls and the extra copy of ``vmap(grad)``; results are identical
up to rounding (tested against the vmap path and an autograd loop).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tdakit.task import Params, Task


def linear_layout(task: Task) -> list[tuple[str, nn.Linear, str | None, str | None]] | None:
    """``[(module name, module, weight name, bias name)]`` if every attributed parameter
    belongs to an ``nn.Linear`` (used at most once in the forward pass), else ``None``."""
    modules = dict(task.model.named_modules())
    layout, covered = [], set()
    for name in task.param_names:
        owner, _, leaf = name.rpartition(".")
        module = modules.get(owner)
        if not isinstance(module, nn.Linear) or leaf not in ("weight", "bias"):
            return None
        if owner not in covered:
            covered.add(owner)
            w = f"{owner}.weight" if owner else "weight"
            b = f"{owner}.bias" if owner else "bias"
            params = set(task.param_names)
            layout.append((owner, module, w if w in params else None, b if b in params else None))
    return layout


def linear_grads(
    task: Task,
    layout: list,
    objective: Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    write: Callable[[str, torch.Tensor, torch.Tensor | None], None],
) -> bool:
    """Compute per-example gradients; ``write(param name, delta, act)`` receives
    ``delta [B, out]`` and ``act [B, in]`` (``None`` for a bias). Returns ``False`` (and
    writes nothing) when a layer saw non-2-D inputs or ran more than once."""
    acts: dict[str, list[torch.Tensor]] = {name: [] for name, *_ in layout}
    outs: dict[str, list[torch.Tensor]] = {name: [] for name, *_ in layout}

    def hook(name: str):
        def record(_m, inputs, output):
            acts[name].append(inputs[0].detach())
            outs[name].append(output)

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m, *_ in layout]
    try:
        params = {n: p.requires_grad_() for n, p in task.params().items()}
        with torch.enable_grad():
            losses = objective(params, x, y)
    finally:
        for h in handles:
            h.remove()
    if any(len(v) != 1 or v[0].ndim != 2 for v in acts.values()):
        return False
    deltas = torch.autograd.grad(losses.sum(), [outs[name][0] for name, *_ in layout])
    for (name, _, w, b), delta in zip(layout, deltas, strict=True):
        if w is not None:
            write(w, delta, acts[name][0])
        if b is not None:
            write(b, delta, None)
    return True
