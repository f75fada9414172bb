"""Arnoldi (Lanczos with full reorthogonalisation) for the top eigenpairs of the curvature,
and the influence inverse restricted to that eigenspace.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from tdakit.errors import NumericalError, require
from tdakit.preconditioners.base import (
    Curvature,
    Preconditioner,
    check_finite_result,
    check_option,
    not_positive_definite,
)
from tdakit.preconditioners.operators import CurvatureOperator

COMPLEMENTS = ("drop", "damping")
NEGATIVE = ("raise", "clamp")


def _orthogonalise(w: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two passes of classical Gram-Schmidt against the rows of ``V``; returns (w, coeffs)."""
    c = V @ w
    w = w - c @ V
    c2 = V @ w
    return w - c2 @ V, c + c2


def arnoldi_eigs(
    op: CurvatureOperator, krylov_dim: int, seed: int = 0, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values ``[m]`` (float64, ascending) and Ritz vectors ``[m, P]`` of ``C``.

    Builds an orthonormal Krylov basis ``V`` from a seeded Gaussian start vector with full
    reorthogonalisation; ``T = V C V^T`` is read off the Gram-Schmidt coefficients (its
    upper triangle, mirrored), so it stays exact even when the Krylov space is exhausted
    early and a fresh random direction is drawn (e.g. a low-rank GGN).
    """
    P = op.num_params
    m = min(krylov_dim, P)
    dev, dt = op.task.device, op.task.dtype
    gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def random_unit(V: torch.Tensor) -> torch.Tensor:
        for _ in range(5):
            u = torch.randn(P, generator=gen, dtype=torch.float64).to(device=dev, dtype=dt)
            if len(V):
                u, _ = _orthogonalise(u, V)
            if float(u.norm()) > 1e-3:
                return u / u.norm()
        raise NumericalError("Arnoldi could not extend the Krylov basis; use a smaller krylov_dim.")

    V = torch.empty(0, P, device=dev, dtype=dt)
    coeffs = torch.zeros(m, m, dtype=torch.float64, device=dev)
    v = random_unit(V)
    eps = torch.finfo(dt).eps
    for j in tqdm(range(m), desc="arnoldi", disable=not progress, leave=False):
        V = torch.cat([V, v[None]])
        w = op.mv(v)
        scale = float(w.norm())
        w, c = _orthogonalise(w, V)
        coeffs[: j + 1, j] = c.to(torch.float64)
        if j + 1 == m:
            break
        beta = float(w.norm())
        v = w / beta if beta > 10 * eps * max(scale, 1e-300) else random_unit(V)
    T = torch.triu(coeffs) + torch.triu(coeffs, 1).T
    mu, S = torch.linalg.eigh(T)
    vecs = S.T.to(dt) @ V
    return mu, vecs


class Arnoldi(Preconditioner):
    """``(C + lam I)^{-1}`` in the span of the top-``rank`` eigenvectors of ``C``.

    ``apply(g) = U diag(1 / (mu + lam)) U^T g`` (+ ``(I - U U^T) g / lam`` when
    ``complement="damping"``). ``"drop"`` (default, as in Arnoldi influence) discards the
    orthogonal complement; ``"damping"`` treats the curvature there as zero, which is exact
    when ``C`` has rank ``<= rank``. The top eigenpairs are the largest (algebraic) Ritz values
    of a ``krylov_dim``-dimensional Krylov space (default ``min(P, 2 rank + 20)``).

    Eigenvalues with ``mu + lam`` not safely positive raise (``negative="raise"``) or are
    clamped to ``mu = 0`` (``negative="clamp"``, needs ``lam > 0``). Never returns NaN.
    """

    name = "arnoldi"
    curvatures = ("ggn", "hessian", "fisher")

    def __init__(
        self,
        *,
        rank: int = 50,
        krylov_dim: int | None = None,
        complement: str = "drop",
        negative: str = "raise",
        seed: int = 0,
    ) -> None:
        self.rank = check_option(rank, "rank", int, 0)
        self.krylov_dim = (
            None if krylov_dim is None else check_option(krylov_dim, "krylov_dim", int, 0)
        )
        require(complement in COMPLEMENTS, f"complement must be one of {COMPLEMENTS}.")
        require(negative in NEGATIVE, f"negative must be one of {NEGATIVE}.")
        self.complement, self.negative = complement, negative
        self.seed = check_option(seed, "seed", int)
        self.eigenvalues_: torch.Tensor | None = None
        self.eigenvectors_: torch.Tensor | None = None

    def options(self) -> dict:
        return {
            "rank": self.rank,
            "krylov_dim": self.krylov_dim,
            "complement": self.complement,
            "negative": self.negative,
            "seed": self.seed,
        }

    def fit(self, curvature: Curvature) -> Arnoldi:
        op = curvature.operator()
        lam = curvature.resolve(op=op)
        require(
            self.complement == "drop" or lam > 0,
            "complement='damping' applies 1/λ outside the eigenspace: it needs damping > 0.",
        )
        P = op.num_params
        rank = min(self.rank, P)
        m = min(P, self.krylov_dim if self.krylov_dim is not None else 2 * rank + 20)
        require(m >= rank, f"krylov_dim ({m}) must be at least rank ({rank}).")
        mu, vecs = arnoldi_eigs(op, m, self.seed, curvature.progress)
        mu, vecs = mu[-rank:], vecs[-rank:]
        floor = torch.finfo(op.task.dtype).eps * P * (float(mu.abs().max()) + lam)
        bad = mu + lam <= floor
        if bool(bad.any()):
            if self.negative == "raise" or lam <= 0:
                raise NumericalError(
                    not_positive_definite(op.kind, lam, float(mu.min()), " on the Krylov space")
                    + " Or pass negative='clamp' (with damping > 0) to set those eigenvalues to 0."
                )
            mu = mu.clamp_min(0.0)
        self.eigenvalues_, self.eigenvectors_ = mu, vecs
        self.damping_ = lam
        self._inv = (1.0 / (mu + lam)).to(vecs.dtype)
        return self

    def apply(self, G: torch.Tensor) -> torch.Tensor:
        self._check_fitted(self.eigenvectors_ is not None)
        assert self.eigenvectors_ is not None
        U = self.eigenvectors_.to(G.dtype)
        coef = G @ U.T
        out = (coef * self._inv.to(G.dtype)) @ U
        if self.complement == "damping":
            out = out + (G - coef @ U) / float(self.damping_)  # type: ignore[arg-type]
        return check_finite_result(out, "arnoldi")
