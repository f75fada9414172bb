"""Influence functions: ``S[q, i] = (1/N) g_q^T (C + lam I)^{-1} g_i`` (docs/methods.md).

A composition: per-example gradient features x an inverse-curvature preconditioner x 1/N.
``C`` is the curvature of the MEAN training loss (Hessian, GGN or empirical Fisher),
``lam`` the damping, ``g_i`` the training gradients and ``g_q`` the gradients of the
loss-like query objective. Positive = removing ``z_i`` would raise the query's loss (the
first-order leave-one-out estimate ``theta_{-i} - theta ~ (1/N) H^{-1} g_i``).

The inverse curvature is applied to the (few) query gradients; the training gradients are
streamed against them block by block, so no solver keeps ``[N, P]`` gradients.
"""

from __future__ import annotations

import copy
from typing import Any

from tdakit.data.sources import Source
from tdakit.errors import require
from tdakit.methods.feature_method import FeatureMethod
from tdakit.methods.gradient import GradientFeatures
from tdakit.methods.registry import register
from tdakit.preconditioners import (
    Curvature,
    Exact,
    Preconditioner,
    Projected,
    Relative,
    as_damping,
    make_solver,
)
from tdakit.preconditioners.operators import check_explicit_size
from tdakit.task import Task

# Options of the former flat API, now on the solver object or the damping (docs/migration).
MOVED = {
    "tol": "tda.solvers.CG(tol=...) or tda.solvers.LiSSA(tol=...)",
    "max_iter": "tda.solvers.CG(max_iter=...)",
    "solve_block": "tda.solvers.CG(block=...)",
    "depth": "tda.solvers.LiSSA(depth=...)",
    "repeats": "tda.solvers.LiSSA(repeats=...)",
    "lissa_batch_size": "tda.solvers.LiSSA(batch_size=...)",
    "scale": "tda.solvers.LiSSA(scale=...)",
    "rank": "tda.solvers.Arnoldi(rank=...)",
    "krylov_dim": "tda.solvers.Arnoldi(krylov_dim=...)",
    "complement": "tda.solvers.Arnoldi(complement=...)",
    "negative": "tda.solvers.Arnoldi(negative=...)",
    "max_explicit_params": "tda.solvers.Exact(max_params=...) or Projected(max_params=...)",
    "damping_mode": "damping=tda.solvers.Relative(c)",
    "diag_estimate": "damping=tda.solvers.Relative(c, estimate=...)",
    "seed": "the solver's or the damping's seed: LiSSA(seed=...), Arnoldi(seed=...), "
    "Projected(seed=...), Relative(c, seed=...)",
}


@register
class InfluenceFunction(GradientFeatures, FeatureMethod):
    """Influence functions with a choice of curvature and inverse solver.

    Args:
        task: model, loss and measurement.
        solver: a solver object from ``tda.solvers`` (``Exact()``, ``Projected(dim=k)``,
            ``CG(tol=...)``, ``LiSSA(...)``, ``Arnoldi(rank=...)``, ``KFAC()``,
            ``EKFAC()``, ``DataInf()``), or its name for the defaults. Solver options live
            on the solver object.
        damping: absolute ``lam >= 0`` added to the curvature of the mean loss, or
            ``tda.solvers.Relative(c)`` for ``c * mean diag C``. ``damping_`` holds the value
            used (a dict per layer for DataInf).
        curvature: ``"hessian"``, ``"ggn"`` or ``"fisher"`` (empirical); ``None`` = the
            solver's default (hessian for exact; GGN, positive semi-definite, for the
            iterative and Kronecker solvers; Fisher for projected and DataInf).

    The feature options (``storage``, ``cache_dir``, ``batch_size``, ...) are those of
    :class:`~tdakit.methods.feature_method.FeatureMethod`; a projection comes from the
    solver (``tda.solvers.Projected``), never from ``projection=``.
    """

    name = "influence"

    def __init__(
        self,
        task: Task,
        *,
        solver: str | Preconditioner | dict = "exact",
        damping: float | Relative | dict = 1e-3,
        curvature: str | None = None,
        projection: None = None,
        **kw: Any,
    ) -> None:
        solver = make_solver(solver)
        # seed=0 is FeatureMethod's default (and in to_config); any other seed would be ignored
        moved = [k for k in kw if k in MOVED and not (k == "seed" and kw[k] == 0)]
        require(
            not moved,
            "InfluenceFunction options live on the solver object now: "
            + "; ".join(f"{k}= -> {MOVED[k]}" for k in moved)
            + ". E.g. InfluenceFunction(task, solver=tda.solvers.CG(tol=1e-8)).",
        )
        require(
            projection is None,
            "InfluenceFunction takes no projection=; use solver=tda.solvers.Projected(dim=k) "
            "for influence in a projected gradient space.",
        )
        defaults = {"exact": "hessian"}
        allowed = solver.curvatures
        curvature = defaults.get(solver.name, allowed[0]) if curvature is None else curvature
        require(
            curvature in allowed,
            f"solver {solver.name!r} works with curvature in {allowed}, got {curvature!r}.",
        )
        super().__init__(task, projection=solver.projector, **kw)
        self.projection = None  # it belongs to the solver
        self.solver, self.curvature = solver, curvature
        self.damping = as_damping(damping)
        self.damping_: float | dict[str, float] | None = None
        self.mean_diagonal_: float | None = None

    @property
    def scale(self) -> float:  # type: ignore[override]
        return 1.0 / self.n_train

    def feature_config(self) -> dict:
        return {
            "method": "gradients",
            "projection": None if self.projector is None else self.projector.config,
        }

    def _fit(self, source: Source) -> None:
        task = self.task
        assert task is not None
        next(iter(source.batches(task, 1)))  # resolve params before sizing anything
        if type(self.solver) is Exact:
            check_explicit_size(task.num_params, self.solver.max_params, "exact influence")
        if isinstance(self.solver, Projected):
            check_explicit_size(self.solver.dim, self.solver.max_params, "projected matrix")
        super()._fit(source)

    def _fit_preconditioner(self, source: Source) -> Preconditioner:
        assert self.task is not None and self.features_ is not None
        features = self.features_
        curvature = Curvature(
            self.task,
            source,
            self.curvature,
            self.damping,
            features=lambda: features.blocks(self.block_size),
            projector=self.projector,
            batch_size=self.batch_size,
            progress=self.progress,
        )
        fitted = copy.copy(self.solver).fit(curvature)
        self.damping_ = fitted.damping_
        self.mean_diagonal_ = getattr(fitted, "mean_diagonal_", curvature.mean_diagonal)
        return fitted
