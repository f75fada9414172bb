"""TRAK (Park et al. 2023): projected margin gradients, a Gram preconditioner, an ensemble.

``S[q, i] = (1/M) sum_m phi_q^T (Phi_m^T Phi_m + lambda I)^-1 phi_i (1 - p_i)`` where
``phi = P grad f`` is the randomly projected gradient of the margin ``f`` (multiclass:
``z_y - logsumexp_{j != y} z_j``, so ``sigmoid(f) = p_y``), ``Phi_m`` stacks the train
``phi`` of model ``m`` and ``p_i`` is model ``m``'s probability of example ``i``'s label.

**Sign.** With ``loss = softplus(-f)`` the train gradient is ``-(1 - p_i) grad f_i``; a
Gauss-Newton influence of up-weighting ``z_i`` on the query margin is
``+grad f_q^T H^-1 grad f_i (1 - p_i)``: positive when ``z_i`` raises the query's margin,
i.e. helps. With an identity preconditioner this is exactly Grad-Dot of the margin
measurement. For ``loss="mse"`` with one output the margin is the output itself and
``1 - p_i`` becomes the residual ``y_i - f_i``.

A composition: features ``[phi_i, 1 - p_i]`` per model (cacheable, independent of
``lambda``) x one Cholesky factor per model (:class:`~tdakit.preconditioners.CholeskyInverse`)
x ``1/M``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from tdakit.data.sources import Batch, Source, to_tensors
from tdakit.errors import ConfigError, require
from tdakit.execution import Executor
from tdakit.features.grads import batch_gradients
from tdakit.features.projection import Kind, Projector
from tdakit.losses import negative_margin
from tdakit.methods.feature_method import FeatureMethod
from tdakit.methods.registry import register
from tdakit.preconditioners import CholeskyInverse, Preconditioner
from tdakit.preconditioners.exact import as_dtype
from tdakit.task import Task
from tdakit.training.jobs import train_states
from tdakit.training.recipe import as_recipe

Checkpoint = Mapping[str, torch.Tensor] | nn.Module


def _negative_output(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    require(
        outputs.reshape(len(outputs), -1).shape[1] == 1,
        f"TRAK with loss='mse' needs one model output per example, got outputs of shape "
        f"{tuple(outputs.shape)}. Use InfluenceFunction or GradDot for multi-output regression.",
    )
    return -outputs.reshape(len(outputs))


class GramInverse(Preconditioner):
    """Per model ``m``: ``(Phi_m^T Phi_m + lam_m I)^{-1} / M`` on that model's columns."""

    name = "trak_gram"

    def __init__(self, inverses: list[CholeskyInverse], slices: list[slice]) -> None:
        self.inverses, self.slices = inverses, slices
        self.damping_ = [inv.damping for inv in inverses]  # type: ignore[assignment]

    def apply(self, Q: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(Q)
        for inv, s in zip(self.inverses, self.slices, strict=True):
            out[:, s] = inv.solve(Q[:, s]) / len(self.slices)
        return out


@register
class TRAK(FeatureMethod):
    """TRAK over an ensemble of models given as ``checkpoints`` or trained by a ``recipe``.

    Args:
        task: the model (architecture), loss (``"cross_entropy"`` or one-output ``"mse"``)
            and attributed parameters.
        checkpoints: the ensemble: state dicts or modules of the task's architecture
            (``[model]`` for the task's own model alone).
        recipe: instead of checkpoints, any object with ``recipe.train(X, y, *, indices,
            init_seed, batch_seed) -> nn.Module`` or a plain training function; ``fit``
            trains ``n_models`` models with seeds ``seed, ..., seed + n_models - 1`` through
            ``executor`` (default: in this process; pass ``tda.Executor(...)`` for parallel
            workers and a content-keyed cache).
        n_models: ensemble size when training from ``recipe``.
        subset: ``"full"`` (each recipe model sees all data) or ``"half"`` (a seeded half).
        projection: dimension ``k`` (model ``m`` gets the sketch seeded ``seed * 100003 + m``),
            a :class:`Projector` shared by all models, or ``None`` (exact gradients).
        projection_kind: ``"rademacher"``, ``"gaussian"`` or ``"sjlt"``.
        damping: ``"relative"`` mode (default): ``lambda_m = damping * mean diag(Phi_m^T
            Phi_m)``; ``"absolute"``: ``lambda`` itself, added to ``Phi^T Phi`` (a sum over
            examples, as in the paper). ``dampings_`` holds the values used.
        measurement: ``"margin"`` (TRAK's query function) or ``"task"`` (the task's
            measurement, negated so that lower = better).
        compute_dtype: dtype of the Gram factorisations (float64).
    """

    name = "trak"
    runtime_params = ("checkpoints", "recipe", "executor")
    ensemble_reduction = "mean"

    def __init__(
        self,
        task: Task,
        *,
        checkpoints: Sequence[Checkpoint] | None = None,
        recipe: Any = None,
        n_models: int = 1,
        subset: Literal["full", "half"] = "full",
        projection: Projector | int | dict | None = 512,
        projection_kind: Kind = "rademacher",
        damping: float = 0.1,
        damping_mode: Literal["relative", "absolute"] = "relative",
        measurement: Literal["margin", "task"] = "margin",
        compute_dtype: torch.dtype | str = torch.float64,
        executor: Executor | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(task, projection=None, **kw)
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
        self.checkpoints, self.subset, self.executor = checkpoints, subset, executor
        self.recipe = None if recipe is None else as_recipe(recipe)
        self.damping, self.damping_mode, self.measurement = damping, damping_mode, measurement
        self.projection, self.projection_kind = projection, projection_kind
        self.compute_dtype = as_dtype(compute_dtype)
        if recipe is not None:
            require(
                isinstance(n_models, int) and not isinstance(n_models, bool) and n_models > 0,
                f"n_models must be a positive int, got {n_models!r}.",
            )
            self.tasks: list[Task] = []
        else:
            checkpoints = list(checkpoints)  # type: ignore[arg-type]
            require(len(checkpoints) > 0, "TRAK got an empty list of checkpoints.")
            self.tasks = [task.at(c) for c in checkpoints]
            n_models = len(self.tasks)
        self.n_models = n_models
        self.projectors = self._projectors(projection, projection_kind)
        self.subsets_: list[torch.Tensor | None] = []
        self.dampings_: list[float] = []

    def _projectors(self, projection: Any, kind: Kind) -> list[Projector | None]:
        if isinstance(projection, Projector) or projection is None:
            return [projection] * self.n_models
        if isinstance(projection, dict):
            projection = projection.get("dim")
        require(
            isinstance(projection, int) and not isinstance(projection, bool) and projection > 0,
            f"projection must be a positive int, a Projector or None, got {projection!r}.",
        )
        return [
            Projector(projection, kind, seed=self.seed * 100003 + m) for m in range(self.n_models)
        ]

    def feature_config(self) -> dict:
        return {
            "method": "TRAK",
            "measurement": self.measurement,
            "projections": [None if p is None else p.config for p in self.projectors],
            "models": [t.fingerprint() for t in self.tasks],
        }

    # --- ensemble ---------------------------------------------------------------------------
    def _fit(self, source: Source) -> None:
        if self.recipe is not None:
            self._train_models(source)
        super()._fit(source)

    def _train_models(self, source: Source) -> None:
        X, y = to_tensors(source, "train")
        runs = []
        for m in range(self.n_models):
            s = self.seed + m
            idx = None
            if self.subset == "half":
                gen = torch.Generator().manual_seed(s)
                idx = torch.randperm(len(X), generator=gen)[: max(1, len(X) // 2)].sort().values
            runs.append((idx, s, s))
        states = train_states(self.recipe, X, y, runs, self.executor, desc="TRAK ensemble")
        self.tasks = [self.task.at(state) for state in states]  # type: ignore[union-attr]
        self.subsets_ = [idx for idx, _, _ in runs]

    # --- features ----------------------------------------------------------------------------
    def _margin_task(self, t: Task) -> Task:
        """The margin task of model ``t``, built once (it records its gradient path)."""
        cache = self.__dict__.setdefault("_margin_tasks", {})
        if id(t) not in cache:
            measure = negative_margin if t.loss_name == "cross_entropy" else _negative_output
            cache[id(t)] = (t, t.with_measurement(measure))
        return cache[id(t)][1]

    def _featurize(self, batch: Batch, objective: str) -> torch.Tensor:
        parts = []
        for t, proj in zip(self.tasks, self.projectors, strict=True):
            mt = t if objective == "query" and self.measurement == "task" else self._margin_task(t)
            phi = -batch_gradients(
                mt,
                batch.inputs,
                batch.targets,
                objective="query",
                projector=proj,
                start=batch.start,
            )
            if objective == "train":
                extra = self._weights(mt, batch)
            else:
                extra = torch.zeros_like(phi[:, 0])
            parts += [phi, extra.unsqueeze(1)]
        return torch.cat(parts, dim=1)

    def _weights(self, mt: Task, batch: Batch) -> torch.Tensor:
        """``1 - p_i = sigmoid(-f_i)`` (cross-entropy) or the residual ``y_i - f_i`` (mse)."""
        with torch.no_grad():
            f = -mt.query_losses(mt.params(), batch.inputs, batch.targets)
        if mt.loss_name == "cross_entropy":
            return torch.sigmoid(-f)
        return batch.targets.reshape(len(f)).to(f.dtype) - f

    def _model_slices(self) -> list[slice]:
        features = self.features_
        assert features is not None
        k = features.dim // self.n_models - 1
        return [slice(m * (k + 1), m * (k + 1) + k) for m in range(self.n_models)]

    def _train_view(self, T: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(T)
        for s in self._model_slices():
            out[:, s] = T[:, s] * T[:, s.stop : s.stop + 1]
        return out

    def _fit_preconditioner(self, source: Source) -> Preconditioner:
        slices = self._model_slices()
        assert self.features_ is not None
        grams: list[torch.Tensor | None] = [None] * len(slices)
        for _, _, T in self.features_.blocks(self.block_size):
            for m, s in enumerate(slices):
                phi = T[:, s].to(self.compute_dtype)
                grams[m] = phi.T @ phi if grams[m] is None else grams[m].addmm_(phi.T, phi)
        inverses = []
        for gram in grams:
            assert gram is not None
            lam = self.damping
            if self.damping_mode == "relative":
                lam *= float(gram.diagonal().mean())
            try:
                inverses.append(CholeskyInverse(gram, lam, "TRAK Gram", self.compute_dtype))
            except ConfigError:
                raise
            except ValueError as err:
                raise type(err)(
                    f"Phi^T Phi + {lam:g} I is singular (the {len(gram)} projected gradient "
                    f"dimensions exceed what {self.n_train} training examples span). Use "
                    "damping > 0 or a smaller projection."
                ) from err
        self.dampings_ = [inv.damping for inv in inverses]
        return GramInverse(inverses, slices)
