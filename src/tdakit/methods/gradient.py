"""First-order gradient methods: Grad-Dot, Grad-Cos and TracIn-CP (docs/methods.md).

Train features are ``g_i = grad loss(z_i)``; query features ``g_q = grad m(z_q)`` of the
loss-like query objective, so ``g_q . g_i > 0`` means a gradient step on ``z_i`` lowers
the query's loss: the example helped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from tdakit.data.sources import Batch
from tdakit.errors import require
from tdakit.features.grads import batch_gradients, gradient_path
from tdakit.methods.feature_method import FeatureMethod
from tdakit.methods.registry import register
from tdakit.task import Task


def unit_rows(F: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; all-zero rows stay zero (cosine 0 with everything)."""
    norms = F.norm(dim=1, keepdim=True)
    return F / torch.where(norms > 0, norms, torch.ones_like(norms))


class GradientFeatures:
    """The gradient feature stage: per-example gradients of the training loss (training
    examples) or of the loss-like query measurement (queries), optionally projected."""

    task: Task
    projector: object

    def _featurize(self, batch: Batch, objective: str) -> torch.Tensor:
        return batch_gradients(
            self.task,
            batch.inputs,
            batch.targets,
            objective=objective,  # type: ignore[arg-type]
            projector=self.projector,
            start=batch.start,  # type: ignore[arg-type]
        )

    def _own_features(self) -> bool:
        """Whether the rows are these gradients (TracIn concatenates its own)."""
        return type(self)._featurize is GradientFeatures._featurize

    def _feature_width(self) -> int | None:
        if not self._own_features():
            return super()._feature_width()  # type: ignore[misc]
        return self.task.num_params if self.projector is None else self.projector.dim  # type: ignore[attr-defined]

    def _featurize_into(self, batch: Batch, objective: str, out: torch.Tensor) -> None:
        if not self._own_features():
            return super()._featurize_into(batch, objective, out)  # type: ignore[misc]
        batch_gradients(
            self.task,
            batch.inputs,
            batch.targets,
            objective=objective,  # type: ignore[arg-type]
            projector=self.projector,
            out=out,
            start=batch.start,  # type: ignore[arg-type]
        )

    @property
    def gradient_path(self) -> dict[str, str | None]:
        """How per-example gradients were computed: ``"layers"``, ``"vmap"`` or ``"loop"``
        per objective (``None`` before the first batch)."""
        tasks = getattr(self, "tasks", None) or [self.task]
        return {o: gradient_path(tasks[0], o) for o in ("train", "query")}  # type: ignore[arg-type]


@register
class GradDot(GradientFeatures, FeatureMethod):
    """``S[q, i] = g_q . g_i`` at the final parameters (TracIn at one checkpoint).

    Takes the options of :class:`~tdakit.methods.feature_method.FeatureMethod`
    (``projection``, ``storage``, ``cache_dir``, ...) and
    :class:`~tdakit.methods.base.AttributionMethod` (``batch_size``, ``progress``, ...).
    ``gradient_path`` tells how per-example gradients were computed.
    """

    name = "grad_dot"


@register
class GradCos(GradDot):
    """``S[q, i] = g_q . g_i / (|g_q| |g_i|)``: Grad-Dot without the gradient-norm bias."""

    name = "grad_cos"

    def _train_view(self, T: torch.Tensor) -> torch.Tensor:
        return unit_rows(T)

    def _query_view(self, Q: torch.Tensor) -> torch.Tensor:
        return unit_rows(Q)


@register
class TracIn(GradDot):
    """TracIn-CP: ``S[q, i] = sum_t lr_t * g_q(theta_t) . g_i(theta_t)``.

    Grad-Dot on the concatenation over checkpoints of ``sqrt(lr_t) g(theta_t)``;
    ``iter_blocks(..., per_model=True)`` gives the per-checkpoint terms (they sum to the score).

    Args:
        checkpoints: state dicts, or modules of the task's architecture.
        lrs: the learning rate in effect at each checkpoint (one per checkpoint, > 0).
    """

    name = "tracin"
    runtime_params = ("checkpoints",)

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
            all(isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr) for lr in lrs),
            f"TracIn learning rates must be positive and finite, got {lrs}.",
        )
        self.checkpoints, self.lrs = checkpoints, [float(lr) for lr in lrs]
        self.tasks = [task.at(c) for c in checkpoints]

    def feature_config(self) -> dict:
        return {
            **super().feature_config(),
            "lrs": self.lrs,
            "checkpoints": [t.fingerprint() for t in self.tasks],
        }

    def _featurize(self, batch: Batch, objective: str) -> torch.Tensor:
        parts = [
            math.sqrt(lr)
            * batch_gradients(
                t,
                batch.inputs,
                batch.targets,
                objective=objective,  # type: ignore[arg-type]
                projector=self.projector,
                start=batch.start,
            )
            for t, lr in zip(self.tasks, self.lrs, strict=True)
        ]
        return torch.cat(parts, dim=1)

    def _model_slices(self) -> list[slice]:
        features = self.features_
        assert features is not None
        d = features.dim // len(self.tasks)
        return [slice(m * d, (m + 1) * d) for m in range(len(self.tasks))]
