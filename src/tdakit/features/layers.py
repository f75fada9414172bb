"""Fast exact per-example gradients for Linear, Conv2d, Embedding and LayerNorm layers.

Evaluated per example (eval mode: no coupling between examples), a layer's parameter
gradient is a function of its input ``a_i`` and the gradient ``delta_i = d loss_i / d o_i``
of its output, and all ``delta_i`` come from ONE backward pass of the summed loss:

- ``nn.Linear`` ``o = W a + b``: ``sum_t delta_t a_t^T`` and ``sum_t delta_t`` (``t`` runs over
  extra positions such as sequence tokens; a single outer product for ``[B, in]`` inputs);
- ``nn.Conv2d``: the same with ``a`` the input patches, summed over output positions;
- ``nn.Embedding``: ``delta_t`` added to the row of token ``t`` (none for ``padding_idx``);
- ``nn.LayerNorm``: ``sum_t delta_t * xhat_t`` and ``sum_t delta_t`` with ``xhat`` the
  normalised input.

A layer whose output has batch size 1 while the batch has ``B`` examples (a position
embedding broadcast over the batch) is expanded to ``B`` rows in the forward hook, so its
per-example ``delta`` exists too. A layer whose first dimension only happens to equal ``B``
(``pos(arange(T))`` of shape ``[T, d]`` with ``T == B``) is caught on the first batch (see
:func:`rows_per_example`) and the general paths are used instead. Results equal
``vmap(grad)`` up to rounding (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tdakit.task import Params, Task

Layout = list[tuple[str, nn.Module, str | None, str | None]]
# write(param name, g, act): the per-example gradient is g [B, ...] when act is None,
# else the outer product of g [B, out] and act [B, in].
Writer = Callable[[str, torch.Tensor, torch.Tensor | None], None]


def supported(module: nn.Module | None) -> bool:
    """Whether ``module``'s parameters have a per-example fast path (and K-FAC factors)."""
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        return True
    if isinstance(module, nn.Embedding):
        return module.max_norm is None and not module.sparse and not module.scale_grad_by_freq
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


def layer_layout(task: Task) -> Layout | None:
    """``[(module name, module, weight name, bias name)]`` if every attributed parameter
    belongs to a supported layer, else ``None`` (use ``vmap(grad)``)."""
    modules = dict(task.model.named_modules())
    params = set(task.param_names)
    layout, covered = [], set()
    for name in task.param_names:
        owner, _, leaf = name.rpartition(".")
        module = modules.get(owner)
        if not supported(module) or leaf not in ("weight", "bias"):
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


def capture(
    layout: Layout, batch: int, run: Callable[[], Any]
) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """Run ``run()`` recording each layer's input and (batch-expanded) output.

    Returns ``(result, inputs, outputs)``, or ``None`` when a layer ran more than once or
    its output's first dimension is neither the batch size nor a broadcast 1.
    """
    acts: dict[str, list[torch.Tensor]] = {name: [] for name, *_ in layout}
    outs: dict[str, list[torch.Tensor]] = {name: [] for name, *_ in layout}

    def hook(name: str):
        def record(_m, inputs, output):
            a = inputs[0]
            if not isinstance(output, torch.Tensor) or output.ndim == 0:
                outs[name].append(None)
                return None
            if output.shape[0] == 1 and batch > 1:  # broadcast over the batch: expand
                a = a.expand(batch, *a.shape[1:])
                output = output.expand(batch, *output.shape[1:])
            acts[name].append(a.detach())
            outs[name].append(output)
            # The rest of the network gets a copy: an in-place op after the layer
            # (nn.ReLU(inplace=True)) must not overwrite the recorded output.
            return output.clone()

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m, *_ in layout]
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
    for name, *_ in layout:
        if len(outs[name]) != 1 or outs[name][0] is None or outs[name][0].shape[0] != batch:
            return None
    return result, {k: v[0] for k, v in acts.items()}, {k: v[0] for k, v in outs.items()}


def layer_grads(
    task: Task,
    layout: Layout,
    objective: Callable[[Params, Any, torch.Tensor], torch.Tensor],
    inputs: Any,
    targets: torch.Tensor,
    write: Writer,
    verify: bool = False,
) -> bool:
    """Compute per-example gradients and hand them to ``write``. Returns ``False`` (having
    written nothing) when the layers cannot be attributed per example this way; with
    ``verify`` (the first batch) also when a layer's rows are not one per example."""
    B = len(targets)
    params = {n: p.requires_grad_() for n, p in task.params().items()}
    with torch.enable_grad():
        got = capture(layout, B, lambda: objective(params, inputs, targets))
    if got is None:
        return False
    losses, acts, outs = got
    if any(not o.requires_grad for o in outs.values()):
        return False
    outputs = [outs[name] for name, *_ in layout]
    deltas = torch.autograd.grad(losses.sum(), outputs, retain_graph=verify)
    if verify and not rows_per_example(losses, outputs, deltas):
        return False
    for (name, module, w, b), delta in zip(layout, deltas, strict=True):
        _write_layer(module, acts[name], delta, w, b, write)
    return True


def rows_per_example(
    losses: torch.Tensor,
    outputs: list[torch.Tensor],
    deltas: tuple[torch.Tensor, ...],
    retain_graph: bool = False,
) -> bool:
    """Whether row ``i`` of every layer output reaches loss ``i`` only.

    A layer whose first dimension only happens to equal the batch size (a position
    embedding ``pos(arange(T))`` of shape ``[T, d]`` with ``T == B``, broadcast over the
    batch) feeds every example; its "per-example" rows would be sums over the batch.
    Checked with random example weights ``r``: ``d(sum_i r_i loss_i) / d out = r * delta``
    holds exactly when the rows are per example.
    """
    gen = torch.Generator().manual_seed(0)
    r = (1 + torch.rand(len(losses), generator=gen, dtype=torch.float64)).to(losses)
    weighted = torch.autograd.grad((losses * r).sum(), outputs, retain_graph=retain_graph)
    tol = torch.finfo(losses.dtype).eps ** 0.5
    for d, g in zip(deltas, weighted, strict=True):
        expected = d * r.view(-1, *([1] * (d.ndim - 1)))
        if float((g - expected).norm()) > tol * float(expected.norm()):
            return False
    return True


def _write_layer(module, a, delta, w, b, write: Writer) -> None:
    B = len(delta)
    if isinstance(module, nn.Conv2d):
        delta = delta.flatten(2)  # [B, C_out, positions]
        if w is not None:
            write(w, torch.bmm(delta, conv_patches(a, module)), None)
        if b is not None:
            write(b, delta.sum(2), None)
    elif isinstance(module, nn.Linear):
        if a.ndim == 2:
            if w is not None:
                write(w, delta, a)
            if b is not None:
                write(b, delta, None)
            return
        d, x = delta.reshape(B, -1, delta.shape[-1]), a.reshape(B, -1, a.shape[-1])
        if w is not None:
            write(w, torch.bmm(d.transpose(1, 2), x), None)
        if b is not None:
            write(b, d.sum(1), None)
    elif isinstance(module, nn.Embedding):
        ids = a.reshape(B, -1).long()
        d = delta.reshape(B, ids.shape[1], -1)
        if module.padding_idx is not None:
            d = d * (ids != module.padding_idx).unsqueeze(-1).to(d.dtype)
        g = torch.zeros(B, module.num_embeddings, d.shape[-1], dtype=d.dtype, device=d.device)
        g.scatter_add_(1, ids.unsqueeze(-1).expand_as(d), d)
        write(w, g, None)
    else:  # LayerNorm
        shape = module.normalized_shape
        xhat = F.layer_norm(a, shape, eps=module.eps)
        dims = tuple(range(1, delta.ndim - len(shape)))
        if w is not None:
            write(w, (delta * xhat).sum(dims) if dims else delta * xhat, None)
        if b is not None:
            write(b, delta.sum(dims) if dims else delta, None)
