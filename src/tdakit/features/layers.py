"""Fast exact per-example gradients for ``nn.Linear`` and ``nn.Conv2d`` parameters.

Evaluated per example (eval mode: no batch coupling), a layer ``o = W a + b`` has
per-example gradients ``delta_i a_i^T`` (weight) and ``delta_i`` (bias), where
``delta_i = d loss_i / d o_i`` comes from ONE backward pass of the summed loss. A Conv2d is
the same with ``a`` its input patches, summed over output positions. This avoids the
batched rank-1 matmuls and grouped convolutions of ``vmap(grad)``; results are identical
up to rounding (tested against the vmap path and an autograd loop).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tdakit.task import Params, Task

Layout = list[tuple[str, nn.Module, str | None, str | None]]
# write(param name, g, act): the per-example gradient is g [B, ...] when act is None,
# else the outer product of g [B, out] and act [B, in].
Writer = Callable[[str, torch.Tensor, torch.Tensor | None], None]


def _supported(module: nn.Module | None) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


def layer_layout(task: Task) -> Layout | None:
    """``[(module name, module, weight name, bias name)]`` if every attributed parameter
    belongs to a supported Linear/Conv2d layer, else ``None`` (use ``vmap(grad)``)."""
    modules = dict(task.model.named_modules())
    params = set(task.param_names)
    layout, covered = [], set()
    for name in task.param_names:
        owner, _, leaf = name.rpartition(".")
        module = modules.get(owner)
        if not _supported(module) or leaf not in ("weight", "bias"):
            return None
        if owner not in covered:
            covered.add(owner)
            w, b = (f"{owner}.{leaf}" if owner else leaf for leaf in ("weight", "bias"))
            layout.append((owner, module, w if w in params else None, b if b in params else None))
    return layout


def conv_patches(x: torch.Tensor, m: nn.Conv2d) -> torch.Tensor:
    """Conv2d input patches ``[B, positions, C*kh*kw]`` (``F.unfold`` order), padding
    included, from strided views (much faster than ``F.unfold`` on CPU for few channels)."""
    x = F.pad(x, m._reversed_padding_repeated_twice)
    for dim, k, d, s in zip((2, 3), m.kernel_size, m.dilation, m.stride, strict=True):
        x = x.unfold(dim, (k - 1) * d + 1, s)[..., ::d]
    B, C, Ho, Wo, kh, kw = x.shape
    return x.permute(0, 2, 3, 1, 4, 5).reshape(B, Ho * Wo, C * kh * kw)


def layer_grads(
    task: Task,
    layout: Layout,
    objective: Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    write: Writer,
) -> bool:
    """Compute per-example gradients and hand them to ``write``. Returns ``False`` (having
    written nothing) when a layer ran more than once or saw inputs of another rank."""
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
    rank = {name: 4 if isinstance(m, nn.Conv2d) else 2 for name, m, *_ in layout}
    if any(len(v) != 1 or v[0].ndim != rank[k] for k, v in acts.items()):
        return False
    deltas = torch.autograd.grad(losses.sum(), [outs[name][0] for name, *_ in layout])
    for (name, module, w, b), delta in zip(layout, deltas, strict=True):
        if isinstance(module, nn.Conv2d):
            delta = delta.flatten(2)  # [B, C_out, positions]
            if w is not None:
                write(w, torch.bmm(delta, conv_patches(acts[name][0], module)), None)
            if b is not None:
                write(b, delta.sum(2), None)
        else:
            if w is not None:
                write(w, delta, acts[name][0])
            if b is not None:
                write(b, delta, None)
    return True
