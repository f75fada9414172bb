"""First-order gradient methods: Grad-Dot, Grad-Cos and TracIn-CP (METHODS.md §2).

Train features are ``g_i = grad loss(z_i)``; query features ``g_q = grad m(z_q)`` of the
loss-like query objective, so ``g_q . g_i > 0`` means a gradient step on ``z_i`` lowers
the query's loss: the example helped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from tdakit.errors import require
from tdakit.features.grads import gradient_features
from tdakit.features.projection import Projector, make_projector
from tdakit.methods.base import FeatureMethod
from tdakit.task import Task


class GradDot(FeatureMethod):
    """``S[q, i] = g_q . g_i`` at the final parameters (TracIn at one checkpoint).

    Args:
        task: the model and losses.
        projection: ``None`` (exact gradients), a target dimension, or a :class:`Projector`.
        projection_kind, seed: kind and seed of the projection when ``projection`` is an int.
        cache_dir: keep train features in a content-keyed feature store there.
    """

    def __init__(
        self,
        task: Task,
        *,
        projection: Projector | int | None = None,
        projection_kind: str = "rademacher",
        seed: int = 0,
        **kw,
    ) -> None:
        super().__init__(task, projection=make_projector(projection, projection_kind, seed), **kw)

    def _features(self, X: torch.Tensor, y: torch.Tensor, objective: str) -> torch.Tensor:
        return gradient_features(
            self.task,
            X,
            y,
            objective=objective,
            projector=self.projector,
            batch_size=self.batch_size,
            progress=self.progress,
            desc=f"{type(self).__name__} {objective} gradients",
        )


def unit_rows(F: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; all-zero rows stay zero (cosine 0 with everything)."""
    norms = F.norm(dim=1, keepdim=True)
    return F / torch.where(norms > 0, norms, torch.ones_like(norms))


class GradCos(GradDot):
    """``S[q, i] = g_q . g_i / (|g_q| |g_i|)``: Grad-Dot without the gradient-norm bias."""

    def _finish_train(self, T: torch.Tensor) -> torch.Tensor:
        return unit_rows(T)

    def _prepare(self, Q: torch.Tensor) -> torch.Tensor:
        return unit_rows(Q)


class TracIn(GradDot):
    """TracIn-CP: ``S[q, i] = sum_t lr_t * g_q(theta_t) . g_i(theta_t)``.

    Implemented as Grad-Dot on the concatenation over checkpoints of ``sqrt(lr_t) g(theta_t)``.

    Args:
        checkpoints: state dicts, or modules of the task's architecture.
        lrs: the learning rate in effect at each checkpoint (one per checkpoint, > 0).
    """

    def __init__(
        self,
        task: Task,
        checkpoints: Sequence[Mapping[str, torch.Tensor] | nn.Module],
        lrs: Sequence[float] | float,
        **kw,
    ) -> None:
        super().__init__(task, **kw)
        checkpoints = list(checkpoints)
        require(len(checkpoints) > 0, "TracIn needs at least one checkpoint.")
        lrs = [float(lrs)] * len(checkpoints) if isinstance(lrs, (int, float)) else list(lrs)
        require(
            len(lrs) == len(checkpoints),
            f"TracIn got {len(checkpoints)} checkpoints but {len(lrs)} learning rates; "
            "pass one learning rate per checkpoint.",
        )
        require(
            all(lr > 0 and math.isfinite(lr) for lr in lrs),
            f"TracIn learning rates must be positive and finite, got {lrs}.",
        )
        self.tasks = [task.at(c) for c in checkpoints]
        self.lrs = lrs

    def cache_config(self) -> dict:
        return {
            **super().cache_config(),
            "lrs": self.lrs,
            "checkpoints": [t.fingerprint() for t in self.tasks],
        }

    def _features(self, X: torch.Tensor, y: torch.Tensor, objective: str) -> torch.Tensor:
        parts = [
            math.sqrt(lr)
            * gradient_features(
                t,
                X,
                y,
                objective=objective,
                projector=self.projector,
                batch_size=self.batch_size,
                progress=self.progress,
                desc=f"TracIn checkpoint {c} {objective}",
            )
            for c, (t, lr) in enumerate(zip(self.tasks, self.lrs, strict=True))
        ]
        return torch.cat(parts, dim=1)
