"""Closed-form inverse-curvature solvers: exact (Cholesky) and DataInf.

Every solver maps a block of row vectors ``G [n, P]`` to ``(C + lam I)^{-1} G`` (as rows),
where ``C`` is the curvature of the mean training loss and ``lam`` the absolute damping.
The iterative solvers (CG, LiSSA) are in :mod:`tdakit.curvature.iterative`, Arnoldi in
:mod:`tdakit.curvature.lanczos`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from tdakit.errors import TdakitError, require


class InverseCurvature(Protocol):
    """What every solver offers: rows ``G [n, P]`` -> rows of ``(C + lam I)^{-1} G``."""

    def apply(self, G: torch.Tensor) -> torch.Tensor: ...


def check_damping(damping: float, name: str = "damping") -> float:
    require(
        isinstance(damping, (int, float)) and not isinstance(damping, bool),
        f"{name} must be a number, got {damping!r}.",
    )
    require(
        math.isfinite(damping) and damping >= 0,
        f"{name} must be finite and >= 0, got {damping}; it is the absolute λ added to the "
        "curvature of the mean training loss (use damping_mode='relative' for c * mean diag).",
    )
    return float(damping)


def in_row_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor], G: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Apply ``fn`` to ``G`` in chunks of at most ``chunk`` rows."""
    require(G.ndim == 2, f"Expected a block of vectors [n, P], got shape {tuple(G.shape)}.")
    if len(G) <= chunk:
        return fn(G)
    return torch.cat([fn(G[a : a + chunk]) for a in range(0, len(G), chunk)])


def check_finite_result(out: torch.Tensor, solver: str) -> torch.Tensor:
    if not torch.isfinite(out).all():
        raise TdakitError(
            f"The {solver} solver produced non-finite values: the damped curvature is (nearly) "
            "singular or indefinite. Increase damping (or use damping_mode='relative'), or use "
            "curvature='ggn'."
        )
    return out


LABELS = {"hessian": "Hessian", "ggn": "GGN", "fisher": "empirical Fisher"}


def not_positive_definite(
    kind: str, damping: float, min_eig: float | None = None, where: str = ""
) -> str:
    """The error message for an indefinite or singular damped curvature."""
    kind = LABELS.get(kind, kind)
    if min_eig is None:
        return (
            f"The damped {kind} ({kind} + λI, λ={damping:.3g}) is not positive definite"
            f"{where}. Use a larger damping (or damping_mode='relative'), or curvature='ggn' "
            "(positive semi-definite)."
        )
    need = max(-min_eig, 0.0)
    suggest = max(2 * need, 1e-3 * abs(min_eig), 1e-8)
    return (
        f"{kind} + λI is not (numerically) positive definite{where}: its smallest eigenvalue "
        f"is {min_eig:.3g} and the damping is λ={damping:.3g}. Use a larger damping "
        f"(above {need:.3g}, e.g. damping={suggest:.3g}) or damping_mode='relative', or "
        "curvature='ggn' (positive semi-definite)."
    )


class ExactSolver:
    """Cholesky factor of the explicit ``C + lam I`` (in float64); refuses indefinite input.

    The same solver inverts the ``[k, k]`` matrix of the ``projected`` method.

    Args:
        matrix: symmetric ``[d, d]`` curvature.
        damping: absolute ``lam >= 0``.
        kind: name used in error messages (``"Hessian"``, ``"GGN"``...).
    """

    def __init__(self, matrix: torch.Tensor, damping: float, kind: str = "curvature") -> None:
        require(
            matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1],
            f"The curvature matrix must be square, got {tuple(matrix.shape)}.",
        )
        require(bool(torch.isfinite(matrix).all()), f"The {kind} matrix contains NaN or inf.")
        damping = check_damping(damping)
        A = matrix.to(torch.float64)
        A = 0.5 * (A + A.T) + damping * torch.eye(len(A), dtype=A.dtype, device=A.device)
        L, info = torch.linalg.cholesky_ex(A)
        pivots = torch.diagonal(L).pow(2)
        tiny = torch.finfo(torch.float64).eps * len(A) * float(A.diagonal().abs().max())
        if int(info) != 0 or not bool(torch.isfinite(L).all()) or float(pivots.min()) <= tiny:
            min_eig = float(torch.linalg.eigvalsh(matrix.to(torch.float64)).min())
            raise TdakitError(not_positive_definite(kind, damping, min_eig))
        self.L, self.damping = L, damping

    def apply(self, G: torch.Tensor) -> torch.Tensor:
        require(
            G.ndim == 2 and G.shape[1] == len(self.L),
            f"Expected vectors [n, {len(self.L)}], got {tuple(G.shape)}.",
        )
        X = torch.cholesky_solve(G.to(torch.float64).T, self.L.to(G.device)).T
        return check_finite_result(X.to(G.dtype), "exact")


class DataInfSolver:
    """DataInf: per layer, ``(1/N) sum_j (g_jl g_jl^T + lam_l I)^{-1}`` in closed form.

    With Sherman-Morrison each term is ``(I - g g^T / (lam_l + |g|^2)) / lam_l``, so

        prep(q)_l = (q_l - (1/N) sum_j g_jl (g_jl . q_l) / (lam_l + |g_jl|^2)) / lam_l,

    which approximates ``(F_l + lam_l I)^{-1} q_l`` for the layer's empirical Fisher ``F_l``.

    Args:
        T: per-example training gradients ``[N, P]``.
        slices: the flat-vector slice of each layer.
        dampings: ``lam_l > 0`` per layer.
        block: training rows processed at once.
    """

    def __init__(
        self,
        T: torch.Tensor,
        slices: Sequence[slice],
        dampings: Sequence[float],
        block: int = 4096,
    ) -> None:
        require(len(slices) == len(dampings), "DataInf needs one damping per layer.")
        for lam in dampings:
            require(
                check_damping(lam) > 0,
                "DataInf divides by the damping: use damping > 0 (or damping_mode='relative').",
            )
        self.T, self.slices, self.dampings, self.block = T, list(slices), list(dampings), block
        self.sq_norms = [T[:, s].pow(2).sum(1) for s in self.slices]

    def apply(self, G: torch.Tensor) -> torch.Tensor:
        T, N = self.T, len(self.T)
        G = G.to(T.dtype)
        out = torch.empty_like(G)
        for s, lam, sq in zip(self.slices, self.dampings, self.sq_norms, strict=True):
            q = G[:, s]
            acc = torch.zeros_like(q)
            for a in range(0, N, self.block):
                Tl = T[a : a + self.block, s]
                acc += ((q @ Tl.T) / (lam + sq[a : a + self.block])) @ Tl
            out[:, s] = (q - acc / N) / lam
        return check_finite_result(out, "datainf")
