"""Explicit inverses: one Cholesky factorisation for every method that forms a matrix.

:class:`CholeskyInverse` factors ``M + lam I`` once (in ``compute_dtype``, float64 by
default) and offers solves, quadratic forms and the log-determinant. It serves exact
influence (:class:`Exact`), influence in a projected gradient space (:class:`Projected`),
TRAK's per-model Gram matrices, the representer refit's Newton steps and the
Gaussian-process posterior.
"""

from __future__ import annotations

import torch

from tdakit.errors import ConfigError, NumericalError, require
from tdakit.features.projection import KINDS as PROJECTIONS
from tdakit.features.projection import Projector
from tdakit.preconditioners.base import (
    Curvature,
    Preconditioner,
    check_damping,
    check_finite_result,
    check_option,
    not_positive_definite,
)
from tdakit.preconditioners.operators import MAX_EXPLICIT_PARAMS, check_explicit_size

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def as_dtype(value: torch.dtype | str) -> torch.dtype:
    """``torch.float64``/``torch.float32`` or their names."""
    if isinstance(value, str):
        require(value in DTYPES, f"compute_dtype must be one of {tuple(DTYPES)}, got {value!r}.")
        return DTYPES[value]
    require(
        value in DTYPES.values(),
        f"compute_dtype must be torch.float64 or torch.float32, got {value!r}.",
    )
    return value


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class CholeskyInverse:
    """``(M + lam I)^{-1}`` for a symmetric ``M [d, d]``; refuses indefinite input.

    Args:
        matrix: symmetric ``[d, d]`` (it is symmetrised; one copy is made).
        damping: absolute ``lam >= 0`` added to the diagonal.
        kind: name used in error messages (``"Hessian"``, ``"GGN"``...).
        compute_dtype: the factorisation's dtype (float64 by default).
    """

    def __init__(
        self,
        matrix: torch.Tensor,
        damping: float,
        kind: str = "curvature",
        compute_dtype: torch.dtype = torch.float64,
    ) -> None:
        require(
            matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1],
            f"The curvature matrix must be square, got {tuple(matrix.shape)}.",
        )
        require(
            bool(torch.isfinite(matrix).all()),
            f"The {kind} matrix contains NaN or inf.",
            NumericalError,
        )
        damping = check_damping(damping)
        A = matrix.to(compute_dtype, copy=True)
        A.add_(A.T.clone()).mul_(0.5)
        A.diagonal().add_(damping)
        L, info = torch.linalg.cholesky_ex(A)
        scale = float(A.diagonal().abs().max()) if len(A) else 0.0
        tiny = torch.finfo(compute_dtype).eps * len(A) * scale
        if (
            int(info) != 0
            or not bool(torch.isfinite(L).all())
            or float(torch.diagonal(L).pow(2).min()) <= tiny
        ):
            min_eig = float(torch.linalg.eigvalsh(matrix.to(torch.float64)).min())
            raise NumericalError(not_positive_definite(kind, damping, min_eig))
        del A
        self.L, self.damping, self.dim = L, damping, len(L)

    def _check(self, G: torch.Tensor) -> None:
        require(
            G.ndim == 2 and G.shape[1] == self.dim,
            f"Expected vectors [n, {self.dim}], got {tuple(G.shape)}.",
        )

    def solve(self, G: torch.Tensor) -> torch.Tensor:
        """Rows ``G [n, d]`` -> rows of ``(M + lam I)^{-1} G`` (in ``G``'s dtype)."""
        self._check(G)
        L = self.L.to(G.device)
        X = torch.cholesky_solve(G.to(L.dtype).T, L).T
        return check_finite_result(X.to(G.dtype), "exact")

    def half_solve(self, G: torch.Tensor) -> torch.Tensor:
        """Rows of ``L^{-1} g`` (so that ``|L^{-1} g|^2 = g^T (M + lam I)^{-1} g``)."""
        self._check(G)
        L = self.L.to(G.device)
        return torch.linalg.solve_triangular(L, G.to(L.dtype).T, upper=False).T

    def quadratic(self, G: torch.Tensor) -> torch.Tensor:
        """``g^T (M + lam I)^{-1} g`` per row ``[n]`` (in the compute dtype)."""
        return self.half_solve(G).pow(2).sum(1)

    def logdet(self) -> float:
        return float(2 * torch.log(torch.diagonal(self.L)).sum())


class Exact(Preconditioner):
    """The explicit damped curvature, Cholesky-factored (small ``P``).

    Args:
        max_params: largest ``P`` for which the ``[P, P]`` matrix is formed.
        compute_dtype: dtype of the factorisation (``torch.float64`` by default).
    """

    name = "exact"
    curvatures = ("hessian", "ggn", "fisher")

    def __init__(
        self,
        *,
        max_params: int = MAX_EXPLICIT_PARAMS,
        compute_dtype: torch.dtype | str = torch.float64,
    ) -> None:
        self.max_params = check_option(max_params, "max_params", int, 0)
        self.compute_dtype = as_dtype(compute_dtype)
        self.inverse_: CholeskyInverse | None = None

    def options(self) -> dict:
        return {"max_params": self.max_params, "compute_dtype": dtype_name(self.compute_dtype)}

    def _matrix(self, curvature: Curvature) -> torch.Tensor:
        check_explicit_size(curvature.task.num_params, self.max_params, "exact influence")
        if curvature.kind == "fisher" and curvature.features is not None:
            return curvature.feature_gram(self.compute_dtype)
        return curvature.operator().matrix(self.max_params)

    def fit(self, curvature: Curvature) -> Exact:
        M = self._matrix(curvature)
        lam = curvature.resolve(exact=lambda: float(M.diagonal().mean()))
        label = {"hessian": "Hessian", "ggn": "GGN", "fisher": "empirical Fisher"}
        prefix = "projected " if self.projector is not None else ""
        self.inverse_ = CholeskyInverse(M, lam, prefix + label[curvature.kind], self.compute_dtype)
        self.damping_ = lam
        return self

    def apply(self, Q: torch.Tensor) -> torch.Tensor:
        self._check_fitted(self.inverse_ is not None)
        assert self.inverse_ is not None
        return self.inverse_.solve(Q)

    def quadratic(self, Q: torch.Tensor) -> torch.Tensor:
        self._check_fitted(self.inverse_ is not None)
        assert self.inverse_ is not None
        return self.inverse_.quadratic(Q).to(Q.dtype)

    def logdet(self) -> float:
        self._check_fitted(self.inverse_ is not None)
        assert self.inverse_ is not None
        return self.inverse_.logdet()


class Projected(Exact):
    """Exact influence in a ``dim``-dimensional random projection of the gradients.

    The features become ``g^T R`` (``R`` seeded, applied per parameter block); the curvature
    is formed in the same coordinates: ``Phi^T Phi / N`` (empirical Fisher, default) or the
    projected GGN ``(1/N) sum_i R^T J_i^T H_i J_i R``, and Cholesky-factored.

    Args:
        dim: projection dimension ``k`` (or ``projector``: a ready :class:`Projector`, e.g.
            a :class:`~tdakit.preconditioners.operators.MatrixProjector`).
        kind, seed: the sketch (``"rademacher"``, ``"gaussian"``, ``"sjlt"``) and its seed.
    """

    name = "projected"
    curvatures = ("fisher", "ggn")

    def __init__(
        self,
        dim: int = 512,
        *,
        kind: str = "rademacher",
        seed: int = 0,
        projector: Projector | None = None,
        max_params: int = MAX_EXPLICIT_PARAMS,
        compute_dtype: torch.dtype | str = torch.float64,
    ) -> None:
        super().__init__(max_params=max_params, compute_dtype=compute_dtype)
        if projector is None:
            check_option(dim, "dim", int, 0)
            require(kind in PROJECTIONS, f"Unknown projection kind {kind!r}; use {PROJECTIONS}.")
            projector = Projector(dim, kind=kind, seed=seed)  # type: ignore[arg-type]
        else:
            require(
                isinstance(projector, Projector),
                f"projector must be a tdakit Projector, got {type(projector).__name__}.",
            )
        self._projector = projector
        self.dim, self.kind, self.seed = projector.dim, kind, seed

    @property
    def projector(self) -> Projector:
        return self._projector

    def options(self) -> dict:
        return {"dim": self.dim, "kind": self.kind, "seed": self.seed, **super().options()}

    def _matrix(self, curvature: Curvature) -> torch.Tensor:
        check_explicit_size(self.dim, self.max_params, "projected matrix")
        if curvature.kind == "fisher":
            return curvature.feature_gram(self.compute_dtype)
        if curvature.kind != "ggn":
            raise ConfigError("The projected solver forms the GGN or the empirical Fisher.")
        return curvature.operator().projected(self.projector).to(self.compute_dtype)
