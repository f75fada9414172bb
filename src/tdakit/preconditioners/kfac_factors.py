"""The per-batch pieces of K-FAC and EK-FAC: layer inputs (patches, tokens), output
gradients per column of the loss Hessian's square root, the input factor ``A`` and the
EK-FAC eigenvalue sums, chunked to bound memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from tdakit.features.layers import conv_patches
from tdakit.preconditioners.operators import output_hessians
from tdakit.task import Task

if TYPE_CHECKING:
    from tdakit.preconditioners.kfac import KFACLayer

_CHUNK_ELEMENTS = 2**22  # cap on per-example [chunk, out, in] tensors (EK-FAC)


def loss_hessian_roots(task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``L_i`` ``[B, K, K]`` with ``L_i L_i^T`` the output-space loss Hessian (PSD part)."""
    w, V = torch.linalg.eigh(output_hessians(task._loss, out, y))
    return (V * w.clamp_min(0.0).sqrt().unsqueeze(1)).to(out.dtype)


def a_factor(layer: KFACLayer, a: torch.Tensor) -> torch.Tensor:
    if layer.kind == "embedding":  # a: token ids [B, T] -> diag of E[(1/T) sum_t e e^T]
        counts = torch.zeros(layer.module.num_embeddings, dtype=torch.float64, device=a.device)
        counts.index_add_(
            0,
            a.reshape(-1),
            torch.full((a.numel(),), 1.0 / a.shape[1], dtype=torch.float64, device=a.device),
        )
        return counts
    return torch.einsum("bti,btj->ij", a, a) / a.shape[1]


def layer_inputs(layer: KFACLayer, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, T, in(+1)]``: patches for Conv2d, positions flattened for Linear; token ids
    ``[B, T]`` for embeddings; the input itself for LayerNorm."""
    m = layer.module
    if layer.kind == "embedding":
        return x.reshape(len(x), -1).long()
    if layer.kind == "diagonal":
        return x
    a = conv_patches(x, m) if isinstance(m, nn.Conv2d) else x.reshape(len(x), -1, x.shape[-1])
    a = a.to(dtype)
    ones = torch.ones(*a.shape[:2], 1, dtype=a.dtype, device=a.device)
    if layer.weight is None:
        return ones
    return torch.cat([a, ones], dim=2) if layer.bias is not None else a


def layer_grads(
    layer: KFACLayer, g: torch.Tensor | None, out: torch.Tensor, x: torch.Tensor, dtype
) -> torch.Tensor:
    """Output gradients ``[B, T, out]`` (zeros if the output is unused); for LayerNorm the
    per-example parameter pseudo-gradients ``[B, n_params]``."""
    g = torch.zeros_like(out) if g is None else g
    if layer.kind == "diagonal":
        m = layer.module
        xhat = F.layer_norm(x, m.normalized_shape, eps=m.eps)
        dims = tuple(range(1, g.ndim - len(m.normalized_shape)))  # positions, if any

        def per_example(t: torch.Tensor) -> torch.Tensor:  # t.sum(()) would sum everything
            return (t.sum(dims) if dims else t).reshape(len(g), -1)

        parts = []
        if layer.weight is not None:
            parts.append(per_example(g * xhat))
        if layer.bias is not None:
            parts.append(per_example(g))
        return torch.cat(parts, 1).to(dtype)
    if isinstance(layer.module, nn.Conv2d):
        g = g.flatten(2).transpose(1, 2)
    if layer.kind == "embedding" and layer.module.padding_idx is not None:
        keep = (x.reshape(len(x), -1) != layer.module.padding_idx).unsqueeze(-1)
        g = g.reshape(len(g), -1, g.shape[-1]) * keep.to(g.dtype)
    return g.reshape(len(g), -1, g.shape[-1]).to(dtype)


def sum_sq_rotated(grot: torch.Tensor, arot: torch.Tensor) -> torch.Tensor:
    """``sum_b (sum_t grot[b, t] arot[b, t]^T)^2`` elementwise ``[out, in]``, chunked."""
    B, _, o = grot.shape
    step = max(1, _CHUNK_ELEMENTS // max(1, o * arot.shape[2]))
    total = torch.zeros(o, arot.shape[2], dtype=grot.dtype, device=grot.device)
    for s in range(0, B, step):
        M = torch.einsum("bto,bti->boi", grot[s : s + step], arot[s : s + step])
        total += M.pow(2).sum(0)
    return total


def embedding_sq(grot: torch.Tensor, ids: torch.Tensor, layer: KFACLayer) -> torch.Tensor:
    """``sum_b (sum_t grot[b, t] e_{id[b, t]}^T)^2`` ``[dim, vocab]``, chunked over examples."""
    B, _, o = grot.shape
    V = layer.module.num_embeddings
    step = max(1, _CHUNK_ELEMENTS // max(1, o * V))
    total = torch.zeros(o, V, dtype=grot.dtype, device=grot.device)
    for s in range(0, B, step):
        g, i = grot[s : s + step], ids[s : s + step]
        M = torch.zeros(len(g), V, o, dtype=g.dtype, device=g.device)
        M.scatter_add_(1, i.unsqueeze(-1).expand_as(g), g)
        total += M.pow(2).sum(0).T
    return total
