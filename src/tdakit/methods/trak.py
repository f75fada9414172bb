"""TRAK (Park et al. 2023): projected margin gradients, a Gram preconditioner, an ensemble.

``S[q, i] = (1/M) sum_m phi_q^T (Phi_m^T Phi_m + lambda I)^-1 phi_i (1 - p_i)`` where
``phi = P grad f`` is the randomly projected gradient of the margin ``f`` (multiclass:
``z_y - logsumexp_{j != y} z_j``, so ``sigmoid(f) = p_y``), ``Phi_m`` stacks the train
``phi`` of model ``m`` and ``p_i`` is model ``m``'s probability of example ``i``'s label.

**Sign.** With ``loss = softplus(-f)`` the train gradient is ``-(1 - p_i) grad f_i``; a
Gauss-Newton influence of up-weighting ``z_i`` on the query margin is
``+grad f_q^T H^-1 grad f_i (1 - p_i)``: positive when ``z_i`` raises the query's margin,
i.e. helps (METHODS.md §0). With an identity preconditioner this is exactly Grad-Dot of the
margin measurement (``g_q . g_i`` with ``g_q = -grad f_q``, ``g_i = -(1 - p_i) grad f_i``).

For ``loss="mse"`` with one output the margin is the output itself and ``1 - p_i`` becomes
the residual ``y_i - f_i`` (``-d loss / d f``).

Implementation: a :class:`FeatureMethod` whose train features are, per model, ``[phi_i,
1 - p_i]`` (cacheable; independent of ``lambda``); :meth:`_finish_train` forms and
Cholesky-factors each ``Phi_m^T Phi_m + lambda I`` and keeps ``phi_i (1 - p_i)``; queries
are preconditioned per model and scaled by ``1/M``, then concatenated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from tdakit.errors import TdakitError, require
from tdakit.features.grads import gradient_features
from tdakit.features.projection import Kind, Projector
from tdakit.inputs import batches
from tdakit.methods.base import FeatureMethod
from tdakit.task import Task, negative_margin

Checkpoint = Mapping[str, torch.Tensor] | nn.Module


def _negative_output(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    require(
        outputs.reshape(len(outputs), -1).shape[1] == 1,
        f"TRAK with loss='mse' needs one model output per example, got outputs of shape "
        f"{tuple(outputs.shape)}. Use InfluenceFunction or GradDot for multi-output regression.",
    )
    return -outputs.reshape(len(outputs))


class TRAK(FeatureMethod):
    """TRAK over an ensemble of models given as ``checkpoints`` or trained by a ``recipe``.

    Args:
        task: the model (architecture), loss (``"cross_entropy"`` or one-output ``"mse"``)
            and attributed parameters.
        checkpoints: the ensemble: state dicts or modules of the task's architecture
            (pass ``[model]`` to use only the task's own model).
        recipe: instead of checkpoints, any object with ``recipe.train(X, y, *, indices,
            init_seed, batch_seed) -> nn.Module``; ``fit`` trains ``n_models`` models with
            seeds ``seed, ..., seed + n_models - 1``.
        n_models: ensemble size when training from ``recipe``.
        subset: ``"full"`` (each recipe model sees all data) or ``"half"`` (a seeded random
            half per model, as in the TRAK paper).
        projection: target dimension ``k``, a :class:`Projector` (the same for every model),
            or ``None`` (exact gradients). With a dimension, model ``m`` gets its own
            projection seeded ``seed * 100003 + m``, so projection noise averages out too.
        projection_kind: ``"rademacher"``, ``"gaussian"`` or ``"sjlt"``.
        damping: with ``damping_mode="relative"`` (default) the factor ``c`` in
            ``lambda_m = c * mean diag(Phi_m^T Phi_m)`` (per model; scale-free); with
            ``"absolute"`` the ``lambda >= 0`` itself, added to ``Phi^T Phi`` (the *sum* over
            train examples, as in the paper). ``dampings`` holds the values used.
        damping_mode: ``"relative"`` or ``"absolute"``.
        measurement: ``"margin"`` (TRAK's query function, default) or ``"task"`` (the
            gradient of the task's query measurement, negated so that lower = better).
        seed: seeds the projections and the recipe's models and halves.
    """

    def __init__(
        self,
        task: Task,
        *,
        checkpoints: Sequence[Checkpoint] | None = None,
        recipe: object | None = None,
        n_models: int = 1,
        subset: Literal["full", "half"] = "full",
        projection: Projector | int | None = 512,
        projection_kind: Kind = "rademacher",
        damping: float = 0.1,
        damping_mode: Literal["relative", "absolute"] = "relative",
        measurement: Literal["margin", "task"] = "margin",
        seed: int = 0,
        **kw,
    ) -> None:
        super().__init__(task, **kw)
        require(
            task.loss_name in ("cross_entropy", "mse"),
            f"TRAK needs loss='cross_entropy' (margin) or 'mse' with one output, got "
            f"{task.loss_name!r}. Use GradDot or InfluenceFunction for custom losses.",
        )
        require(
            (checkpoints is None) != (recipe is None),
            "TRAK needs exactly one of checkpoints=[...] (the ensemble; [model] for the "
            "task's model alone) or recipe=... (to train n_models models during fit).",
        )
        require(subset in ("full", "half"), f"subset must be 'full' or 'half', got {subset!r}.")
        require(
            measurement in ("margin", "task"),
            f"measurement must be 'margin' or 'task', got {measurement!r}.",
        )
        require(
            isinstance(damping, (int, float))
            and not isinstance(damping, bool)
            and math.isfinite(damping)
            and damping >= 0,
            f"damping must be a finite number >= 0, got {damping!r}.",
        )
        require(
            damping_mode in ("relative", "absolute"),
            f"damping_mode must be 'relative' or 'absolute', got {damping_mode!r}.",
        )
        self.damping_mode = damping_mode
        self.damping, self.measurement, self.subset, self.seed = damping, measurement, subset, seed
        self.recipe = recipe
        self.subsets: list[torch.Tensor | None] = []
        if recipe is not None:
            require(
                callable(getattr(recipe, "train", None)),
                f"recipe must have a train(X, y, *, indices, init_seed, batch_seed) method "
                f"returning an nn.Module; got {type(recipe).__name__}.",
            )
            require(
                isinstance(n_models, int) and not isinstance(n_models, bool) and n_models > 0,
                f"n_models must be a positive int, got {n_models!r}.",
            )
            self.n_models = n_models
            self.tasks: list[Task] = []
        else:
            checkpoints = list(checkpoints)  # type: ignore[arg-type]
            require(len(checkpoints) > 0, "TRAK got an empty list of checkpoints.")
            self.tasks = [task.at(c) for c in checkpoints]
            self.n_models = len(self.tasks)
        if isinstance(projection, Projector) or projection is None:
            self.projectors = [projection] * self.n_models
        else:
            require(
                isinstance(projection, int) and not isinstance(projection, bool) and projection > 0,
                f"projection must be a positive int, a Projector or None, got {projection!r}.",
            )
            self.projectors = [
                Projector(projection, projection_kind, seed=seed * 100003 + m)
                for m in range(self.n_models)
            ]
        self.projector = self.projectors[0]
        self.dampings: list[float] = []
        self._chol: list[torch.Tensor] = []

    # --- ensemble --------------------------------------------------------------------------
    def _fit(self, X: torch.Tensor, y: torch.Tensor) -> None:
        if self.recipe is not None:
            self._train_models(X, y)
        super()._fit(X, y)

    def _train_models(self, X: torch.Tensor, y: torch.Tensor) -> None:
        self.tasks, self.subsets = [], []
        for m in range(self.n_models):
            s = self.seed + m
            idx = None
            if self.subset == "half":
                gen = torch.Generator().manual_seed(s)
                idx = torch.randperm(len(X), generator=gen)[: max(1, len(X) // 2)].sort().values
            model = self.recipe.train(X, y, indices=idx, init_seed=s, batch_seed=s)  # type: ignore[union-attr]
            require(
                isinstance(model, nn.Module),
                f"recipe.train must return an nn.Module, got {type(model).__name__}.",
            )
            self.tasks.append(self.task.at(model))
            self.subsets.append(idx)

    def cache_config(self) -> dict:
        return {
            "method": "TRAK",
            "projections": [None if p is None else p.config for p in self.projectors],
            "models": [t.fingerprint() for t in self.tasks],
        }

    # --- features ----------------------------------------------------------------------------
    def _margin_task(self, t: Task) -> Task:
        measure = negative_margin if t.loss_name == "cross_entropy" else _negative_output
        return Task(t.model, t._loss, measure, t.params_spec)

    def _features(self, X: torch.Tensor, y: torch.Tensor, objective: str) -> torch.Tensor:
        parts = []
        for m, (t, proj) in enumerate(zip(self.tasks, self.projectors, strict=True)):
            use_task = objective == "query" and self.measurement == "task"
            mt = t if use_task else self._margin_task(t)
            desc = f"TRAK model {m} {objective}"
            phi = -gradient_features(
                mt, X, y, objective="query", projector=proj, batch_size=self.batch_size,
                progress=self.progress, desc=desc,
            )  # fmt: skip
            extra = self._weights(mt, X, y) if objective == "train" else torch.zeros_like(phi[:, 0])
            parts += [phi, extra.unsqueeze(1)]
        return torch.cat(parts, dim=1)

    def _weights(self, mt: Task, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``1 - p_i = sigmoid(-f_i)`` (cross-entropy) or the residual ``y_i - f_i`` (mse)."""
        params, out = mt.params(), []
        with torch.no_grad():
            for _, _, xb, yb in batches(X, y, self.batch_size, mt.device, mt.dtype):
                f = -mt.query_losses(params, xb, yb)
                if mt.loss_name == "cross_entropy":
                    out.append(torch.sigmoid(-f))
                else:
                    out.append(yb.reshape(len(f)).to(f.dtype) - f)
        return torch.cat(out)

    def _blocks(self, T: torch.Tensor) -> list[slice]:
        k = T.shape[1] // self.n_models - 1
        return [slice(m * (k + 1), m * (k + 1) + k) for m in range(self.n_models)]

    def _finish_train(self, T: torch.Tensor) -> torch.Tensor:
        self.dampings, self._chol, out = [], [], []
        for sl in self._blocks(T):
            phi, w = T[:, sl], T[:, sl.stop]
            gram = phi.T.to(torch.float64) @ phi.to(torch.float64)
            lam = self.damping
            if self.damping_mode == "relative":
                lam *= float(gram.diagonal().mean())
            eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
            chol, info = torch.linalg.cholesky_ex(gram + lam * eye)
            if int(info) != 0:
                raise TdakitError(
                    f"Phi^T Phi + {lam:g} I is singular (the {len(gram)} projected gradient "
                    f"dimensions exceed what {len(phi)} training examples span). Use damping > 0 "
                    "or a smaller projection."
                )
            self.dampings.append(lam)
            self._chol.append(chol)
            out.append(phi * w.unsqueeze(1))
        return torch.cat(out, dim=1)

    def _prepare(self, Q: torch.Tensor) -> torch.Tensor:
        out = []
        for sl, chol in zip(self._blocks(Q), self._chol, strict=True):
            pre = torch.cholesky_solve(Q[:, sl].T.to(torch.float64), chol).T
            out.append((pre / self.n_models).to(Q.dtype))
        return torch.cat(out, dim=1)
