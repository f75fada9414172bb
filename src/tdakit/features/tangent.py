"""Tangent records for the Gaussian-process methods, one row per example:

``[Phi (C*k) | L (C*C) | e (C) | r (C)]`` with ``Phi`` the (projected) Jacobian of the
``C`` outputs, ``L`` a square root of the likelihood precision (the loss Hessian in output
space, ``L L^T = Lambda``), ``e = d loss / d outputs`` (so the loss gradient is
``Phi^T e``) and ``r`` the residual ``targets - outputs`` (regression; zero otherwise).
For queries ``e`` is the gradient of the query measurement instead.

``kind="gradient"`` is the scalar special case: ``Phi`` is the projected loss (or
measurement) gradient itself, ``L = e = 1``, ``r = 0``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tdakit.data.sources import Batch
from tdakit.features.grads import batch_gradients
from tdakit.features.projection import Projector
from tdakit.preconditioners.operators import output_hessians, tangent_features
from tdakit.task import Task


class Records(NamedTuple):
    Phi: torch.Tensor  # [b, C, k]
    L: torch.Tensor  # [b, C, C]
    e: torch.Tensor  # [b, C]
    r: torch.Tensor  # [b, C]


def width(C: int, k: int) -> int:
    return C * k + C * C + 2 * C


def tangent_rows(
    task: Task, batch: Batch, projector: Projector | None, objective: str, kind: str
) -> torch.Tensor:
    """Rows ``[b, width(C, k)]`` of a batch as training points or queries."""
    if kind == "gradient":
        g = batch_gradients(
            task,
            batch.inputs,
            batch.targets,
            objective=objective,  # type: ignore[arg-type]
            projector=projector,
            start=batch.start,
        )
        ones = torch.ones(len(g), 1, dtype=g.dtype, device=g.device)
        return torch.cat([g, ones, ones, torch.zeros_like(ones)], dim=1)
    Phi, _ = tangent_features(task, batch.inputs, batch.targets, projector)
    b, C, _ = Phi.shape
    with torch.enable_grad():
        out = task.outputs(task.params(), batch.inputs).detach().requires_grad_(True)
        fn = task._loss if objective == "train" else task._measure
        e = torch.autograd.grad(fn(out, batch.targets).sum(), out)[0].reshape(b, C)
    H = output_hessians(task._loss, out.detach(), batch.targets)
    w, V = torch.linalg.eigh(H)
    L = (V * w.clamp_min(0).sqrt().unsqueeze(1)).to(Phi.dtype)
    r = torch.zeros_like(e)
    if batch.targets.is_floating_point() and batch.targets.numel() == out.numel():
        r = (batch.targets.reshape(b, C) - out.detach().reshape(b, C)).to(Phi.dtype)
    return torch.cat([Phi.reshape(b, -1), L.reshape(b, -1), e.to(Phi.dtype), r], dim=1)


def split_rows(T: torch.Tensor, C: int) -> Records:
    """The :class:`Records` of rows ``T [b, width(C, k)]``."""
    b = len(T)
    k = (T.shape[1] - C * C - 2 * C) // C
    Phi = T[:, : C * k].reshape(b, C, k)
    L = T[:, C * k : C * k + C * C].reshape(b, C, C)
    e = T[:, C * k + C * C : C * k + C * C + C]
    return Records(Phi, L, e, T[:, C * k + C * C + C :])
