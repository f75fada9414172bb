"""Influence functions (METHODS.md §2): ``S[q, i] = (1/N) g_q^T (C + lam I)^{-1} g_i``.

``C`` is the curvature of the MEAN training loss (Hessian, GGN or empirical Fisher),
``lam`` the absolute damping, ``g_i`` the training gradients and ``g_q`` the gradients of
the loss-like query objective. Positive = removing ``z_i`` would raise the query's loss
(the first-order leave-one-out estimate: ``theta_{-i} - theta ~ (1/N) H^{-1} g_i``).

The train features are the per-example gradients; the inverse curvature is applied to
the (few) query gradients, so one solve per query serves all training examples.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from tdakit.curvature.iterative import CGSolver, LissaSolver
from tdakit.curvature.lanczos import ArnoldiSolver
from tdakit.curvature.operators import (
    MAX_EXPLICIT_PARAMS,
    CurvatureOperator,
    as_projector,
    check_explicit_size,
    layer_slices,
    mean_sq_by_layer,
)
from tdakit.curvature.solvers import (
    LABELS,
    DataInfSolver,
    ExactSolver,
    InverseCurvature,
    check_damping,
)
from tdakit.errors import TdakitError, require
from tdakit.features.projection import Projector
from tdakit.methods.gradient import GradDot
from tdakit.task import Task

# Allowed curvatures per solver; the first is the default.
CURVATURES: dict[str, tuple[str, ...]] = {
    "exact": ("hessian", "ggn", "fisher"),
    "projected": ("fisher", "ggn"),
    "cg": ("hessian", "ggn", "fisher"),
    "lissa": ("hessian", "ggn", "fisher"),
    "arnoldi": ("hessian", "ggn", "fisher"),
    "kfac": ("ggn",),
    "ekfac": ("ggn",),
    "datainf": ("fisher",),
}
SOLVERS = tuple(CURVATURES)
DAMPING_MODES = ("absolute", "relative")
DIAG_ESTIMATES = ("auto", "exact", "hutchinson", "grad_sq")


class InfluenceFunction(GradDot):
    """Influence functions with a choice of curvature and inverse solver.

    Grad-Dot's gradient features, preconditioned by ``(C + lam I)^{-1}`` and scaled by 1/N.

    Args:
        task: model, loss and measurement.
        solver: ``"exact"`` (Cholesky of the explicit ``[P, P]`` matrix, small P),
            ``"projected"`` (exact in a k-dim projected gradient space), ``"cg"``,
            ``"lissa"``, ``"arnoldi"``, ``"kfac"``, ``"ekfac"`` or ``"datainf"``.
        damping: ``lam >= 0`` (``damping_mode="absolute"``), or the factor ``c`` with
            ``lam = c * mean diag(C)`` (``"relative"``). ``damping_`` holds the ``lam`` used.
        curvature: ``"hessian"``, ``"ggn"`` or ``"fisher"`` (empirical); ``None`` = the
            solver's default (hessian; fisher for projected/datainf; ggn for (e)kfac).
        projection: for ``solver="projected"``: a dimension k, a :class:`Projector`, or an
            explicit ``[P, k]`` matrix; ``projection_kind`` and ``seed`` build it from an int.
        diag_estimate: how ``mean diag(C)`` is obtained for relative damping: ``"auto"``
            (exact when a matrix is formed, per-layer for datainf, else Hutchinson),
            ``"exact"``, ``"hutchinson"`` (``hutchinson_samples`` probes, ``seed``) or
            ``"grad_sq"`` (``mean(g^2)``, the empirical Fisher's mean diagonal).
        tol, max_iter: CG tolerance (default 1e-6) and iterations; LiSSA step tolerance
            (default 1e-7, full-batch only).
        depth, repeats, lissa_batch_size, scale: LiSSA iterations, repeats averaged (with
            minibatches), minibatch size (``None`` = full data) and scale (``None`` = auto).
        rank, krylov_dim, complement, negative: Arnoldi options (see ``ArnoldiSolver``).
        max_explicit_params: largest P (or k) for which a matrix is formed.
        solve_block: query vectors solved together by CG/LiSSA.
    """

    name = "influence"

    def __init__(
        self,
        task: Task,
        *,
        solver: str = "exact",
        damping: float = 1e-3,
        damping_mode: str = "absolute",
        curvature: str | None = None,
        projection: Projector | torch.Tensor | int | None = None,
        projection_kind: str = "rademacher",
        diag_estimate: str = "auto",
        hutchinson_samples: int = 32,
        tol: float | None = None,
        max_iter: int = 1000,
        depth: int = 1000,
        repeats: int = 1,
        lissa_batch_size: int | None = None,
        scale: float | None = None,
        rank: int = 50,
        krylov_dim: int | None = None,
        complement: str = "drop",
        negative: str = "raise",
        max_explicit_params: int = MAX_EXPLICIT_PARAMS,
        solve_block: int = 128,
        seed: int = 0,
        batch_size: int = 128,
        block_size: int = 4096,
        progress: bool = False,
        cache_dir: str | Path | None = None,
    ) -> None:
        require(solver in SOLVERS, f"Unknown solver {solver!r}; use one of {SOLVERS}.")
        allowed = CURVATURES[solver]
        curvature = allowed[0] if curvature is None else curvature
        require(
            curvature in allowed,
            f"solver={solver!r} works with curvature in {allowed}, got {curvature!r}.",
        )
        require(
            damping_mode in DAMPING_MODES,
            f"Unknown damping_mode {damping_mode!r}; use one of {DAMPING_MODES}.",
        )
        check_damping(damping)
        require(
            diag_estimate in DIAG_ESTIMATES,
            f"Unknown diag_estimate {diag_estimate!r}; use one of {DIAG_ESTIMATES}.",
        )
        projector = as_projector(projection, seed, projection_kind)
        require(
            solver != "projected" or projector is not None,
            "solver='projected' needs projection=k (an int), a Projector or a [P, k] matrix.",
        )
        require(
            solver == "projected" or projector is None,
            f"projection is only used by solver='projected' (got solver={solver!r}); drop it, "
            "or use solver='projected'.",
        )
        require(solve_block > 0, f"solve_block must be positive, got {solve_block}.")
        super().__init__(
            task,
            projection=projector,
            seed=seed,
            cache_dir=cache_dir,
            batch_size=batch_size,
            block_size=block_size,
            progress=progress,
        )
        self.solver, self.curvature = solver, curvature
        self.damping, self.damping_mode, self.diag_estimate = (
            float(damping),
            damping_mode,
            diag_estimate,
        )
        self.hutchinson_samples, self.seed = hutchinson_samples, seed
        self.max_explicit_params, self.solve_block = max_explicit_params, solve_block
        self.options = {
            "tol": tol,
            "max_iter": max_iter,
            "depth": depth,
            "repeats": repeats,
            "lissa_batch_size": lissa_batch_size,
            "scale": scale,
            "rank": rank,
            "krylov_dim": krylov_dim,
            "complement": complement,
            "negative": negative,
        }
        self.damping_: float | dict[str, float] | None = None
        self.mean_diagonal_: float | dict[str, float] | None = None
        self.solver_: InverseCurvature | None = None

    @property
    def scale(self) -> float:  # type: ignore[override]
        return 1.0 / self.n_train

    def _prepare(self, Q: torch.Tensor) -> torch.Tensor:
        if self.solver_ is None:
            raise TdakitError("InfluenceFunction is not fitted: call .fit(train) first.")
        return self.solver_.apply(Q)

    # --- fitting the inverse curvature ------------------------------------------------------
    def _fit(self, X: torch.Tensor, y: torch.Tensor) -> None:
        task = self.task
        assert task is not None
        if self.solver == "exact":
            check_explicit_size(task.num_params, self.max_explicit_params, "exact influence")
        if self.solver == "projected":
            assert self.projector is not None
            check_explicit_size(self.projector.dim, self.max_explicit_params, "projected matrix")
        self.solver_ = None
        super()._fit(X, y)
        T = self._fitted_features()
        build = {
            "exact": self._fit_explicit,
            "projected": self._fit_explicit,
            "datainf": self._fit_datainf,
            "kfac": self._fit_kfac,
            "ekfac": self._fit_kfac,
        }.get(self.solver, self._fit_iterative)
        self.solver_ = build(X, y, T)

    def _fit_explicit(self, X: torch.Tensor, y: torch.Tensor, T: torch.Tensor) -> ExactSolver:
        if self.curvature == "fisher":
            M = T.T @ T / len(T)
        else:
            op = self._operator(X, y)
            projected = self.solver == "projected"
            M = op.projected(self.projector) if projected else op.matrix(self.max_explicit_params)
        lam = self._resolve_damping(T, exact=lambda: float(M.diagonal().mean()))
        return ExactSolver(M, lam, kind=self._label())

    def _fit_iterative(self, X: torch.Tensor, y: torch.Tensor, T: torch.Tensor):
        op = self._operator(X, y)
        lam = self._resolve_damping(T, op=op)
        o, common = self.options, {"progress": self.progress}
        if self.solver == "cg":
            return CGSolver(
                op,
                lam,
                tol=o["tol"] or 1e-6,
                max_iter=o["max_iter"],
                block=self.solve_block,
                **common,
            )
        if self.solver == "lissa":
            return LissaSolver(
                op,
                lam,
                depth=o["depth"],
                repeats=o["repeats"],
                batch_size=o["lissa_batch_size"],
                scale=o["scale"],
                tol=o["tol"] or 1e-7,
                seed=self.seed,
                block=self.solve_block,
                **common,
            )
        return ArnoldiSolver(
            op,
            lam,
            rank=o["rank"],
            krylov_dim=o["krylov_dim"],
            complement=o["complement"],
            negative=o["negative"],
            seed=self.seed,
            **common,
        )

    def _fit_kfac(self, X: torch.Tensor, y: torch.Tensor, T: torch.Tensor):
        from tdakit.curvature.kfac import KFAC

        lam = self._resolve_damping(T, op=self._operator(X, y))
        kfac = KFAC(
            self.task,
            damping=lam,
            eigen_correction=self.solver == "ekfac",
            batch_size=self.batch_size,
            progress=self.progress,
        )
        return kfac.fit(X, y)

    def _fit_datainf(self, X: torch.Tensor, y: torch.Tensor, T: torch.Tensor) -> DataInfSolver:
        assert self.task is not None
        names, slices = layer_slices(self.task)
        if self.damping_mode == "absolute":
            lams = [self.damping] * len(slices)
        else:
            require(
                self.diag_estimate in ("auto", "exact", "grad_sq"),
                "datainf's relative damping uses the exact per-layer mean(g^2); use "
                "diag_estimate='auto'.",
            )
            means = mean_sq_by_layer(T, slices)
            self.mean_diagonal_ = dict(zip(names, means, strict=True))
            lams = [self._relative(m) for m in means]
        self.damping_ = dict(zip(names, lams, strict=True))
        return DataInfSolver(T, slices, lams, block=self.block_size)

    # --- helpers ------------------------------------------------------------------------
    def _operator(self, X: torch.Tensor, y: torch.Tensor) -> CurvatureOperator:
        assert self.task is not None
        kind = "ggn" if self.solver in ("kfac", "ekfac") else self.curvature
        return CurvatureOperator(self.task, X, y, kind, batch_size=self.batch_size)

    def _label(self) -> str:
        prefix = "projected " if self.solver == "projected" else ""
        return prefix + LABELS[self.curvature]

    def _resolve_damping(
        self,
        T: torch.Tensor,
        *,
        exact: Callable[[], float] | None = None,
        op: CurvatureOperator | None = None,
    ) -> float:
        """The absolute ``lam``; for relative damping ``c * mean diag(C)`` (recorded)."""
        if self.damping_mode == "absolute":
            self.damping_ = self.damping
            return self.damping
        est = self.diag_estimate
        if est == "auto":
            est = "exact" if exact is not None else "hutchinson"
        if est == "grad_sq":
            mean = float(T.pow(2).mean())
        elif est == "exact":
            if exact is None:
                assert op is not None
                M = op.matrix(self.max_explicit_params)
                exact = lambda: float(M.diagonal().mean())  # noqa: E731
            mean = exact()
        else:
            require(
                op is not None,
                "diag_estimate='hutchinson' needs curvature-vector products; the projected "
                "solver forms its matrix, so use diag_estimate='auto' or 'grad_sq'.",
            )
            assert op is not None
            mean = op.hutchinson_mean_diagonal(self.hutchinson_samples, self.seed)
        self.mean_diagonal_ = mean
        lam = self._relative(mean)
        self.damping_ = lam
        return lam

    def _relative(self, mean: float) -> float:
        require(
            mean > 0 and mean == mean and mean != float("inf"),
            f"Relative damping needs a positive mean curvature diagonal, got {mean:.3g} (an "
            "indefinite Hessian or zero gradients); use damping_mode='absolute', "
            "curvature='ggn' or diag_estimate='grad_sq'.",
        )
        return self.damping * mean
