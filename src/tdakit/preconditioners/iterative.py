"""Iterative inverse-curvature solvers on curvature-vector products: CG and LiSSA.

Both solve ``(C + lam I) x = g`` for a block of right-hand sides at once (one pass over
the data per iteration serves every column). :func:`conjugate_gradient` is the one CG of
tdakit (the representer refit uses it too).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from tdakit.errors import NumericalError
from tdakit.preconditioners.base import (
    Curvature,
    Preconditioner,
    check_finite_result,
    check_option,
    in_row_chunks,
    not_positive_definite,
)
from tdakit.preconditioners.operators import CurvatureOperator

RowsOperator = Callable[[torch.Tensor], torch.Tensor]  # rows [r, d] -> rows of A applied


def conjugate_gradient(
    apply_rows: RowsOperator,
    B: torch.Tensor,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    progress: bool = False,
    indefinite: str = "The operator is not positive definite (found by CG).",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``A x = b`` for every row ``b`` of ``B`` (``A`` symmetric positive definite).

    Rows stop individually once ``|r| <= tol |b|``. Returns ``(X, relative residuals)``.
    A direction with ``p^T A p <= 0`` raises :class:`NumericalError` with ``indefinite``.
    """
    X = torch.zeros_like(B)
    R = B.clone()
    Pd = R.clone()
    rs = (R * R).sum(1)
    norms = B.norm(dim=1)
    target = tol * norms
    active = rs.sqrt() > target
    bar = tqdm(desc="cg", unit="it", disable=not progress, leave=False)  # no total: stops early
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        idx = active.nonzero().squeeze(1)
        Pa = Pd[idx]
        APa = apply_rows(Pa)
        pAp = (Pa * APa).sum(1)
        if bool((pAp <= 0).any()) or not bool(torch.isfinite(pAp).all()):
            bar.close()
            raise NumericalError(indefinite)
        alpha = rs[idx] / pAp
        X[idx] += alpha[:, None] * Pa
        R[idx] -= alpha[:, None] * APa
        rs_new = (R[idx] * R[idx]).sum(1)
        Pd[idx] = R[idx] + (rs_new / rs[idx])[:, None] * Pa
        rs[idx] = rs_new
        active[idx] = rs_new.sqrt() > target[idx]
        bar.update(1)
        bar.set_postfix(active=int(active.sum()))
    bar.close()
    return X, rs.sqrt() / norms.clamp_min(1e-300)


def _rows_mm(op: CurvatureOperator, R: torch.Tensor, idx: torch.Tensor | None = None):
    return op.mm(R.T, idx).T


def power_iteration(
    op: CurvatureOperator, iters: int = 20, seed: int = 0, rtol: float = 1e-3
) -> float:
    """Largest-magnitude eigenvalue of ``C`` (Rayleigh quotient), seeded start vector."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    v = torch.randn(op.num_params, generator=gen, dtype=torch.float64)
    v = (v / v.norm()).to(device=op.task.device, dtype=op.task.dtype)
    est = 0.0
    for _ in range(iters):
        w = op.mv(v)
        new = float(v @ w)
        norm = float(w.norm())
        if norm == 0.0:
            return 0.0
        v = w / norm
        if abs(new - est) <= rtol * abs(new):
            return new
        est = new
    return est


class CG(Preconditioner):
    """Batched conjugate gradient on ``(C + lam I) x = g`` for each query row.

    Args:
        tol: stop a row once ``|r| <= tol |g|`` (``0`` runs ``max_iter`` iterations).
        max_iter: iteration cap; rows still above ``tol`` then get a warning (the last
            iterate is returned, finite).
        block: query rows solved together.

    A direction with non-positive curvature raises at once (use the GGN, the default).
    """

    name = "cg"
    curvatures = ("ggn", "hessian", "fisher")

    def __init__(self, *, tol: float = 1e-6, max_iter: int = 1000, block: int = 128) -> None:
        self.tol = float(check_option(tol, "tol", (int, float), 0, strict=False))
        self.max_iter = check_option(max_iter, "max_iter", int, 0)
        self.block = check_option(block, "block", int, 0)
        self.op_: CurvatureOperator | None = None
        self.progress = False

    def options(self) -> dict:
        return {"tol": self.tol, "max_iter": self.max_iter, "block": self.block}

    def fit(self, curvature: Curvature) -> CG:
        self.op_ = curvature.operator()
        self.damping_ = curvature.resolve(op=self.op_)
        self.progress = curvature.progress
        return self

    def apply(self, Q: torch.Tensor) -> torch.Tensor:
        self._check_fitted(self.op_ is not None)
        return in_row_chunks(self._solve, Q, self.block)

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        op, lam = self.op_, float(self.damping_)  # type: ignore[arg-type]
        assert op is not None
        X, rel = conjugate_gradient(
            lambda P: _rows_mm(op, P) + lam * P,
            B,
            tol=self.tol,
            max_iter=self.max_iter,
            progress=self.progress,
            indefinite=not_positive_definite(op.kind, lam, where=" (found by CG)"),
        )
        bad = rel > self.tol
        if self.tol > 0 and bool(bad.any()):
            warnings.warn(
                f"CG did not converge for {int(bad.sum())} of {len(B)} vectors after "
                f"{self.max_iter} iterations (largest relative residual {float(rel.max()):.2e} "
                f"> tol {self.tol:.1e}); increase max_iter or the damping.",
                RuntimeWarning,
                stacklevel=4,
            )
        return check_finite_result(X, "cg")


class LiSSA(Preconditioner):
    """LiSSA: a truncated Neumann series for ``(C + lam I)^{-1}``.

    With scale ``s >= lambda_max(C + lam I)`` and ``A = (C + lam I) / s`` the iteration

        h_0 = v,   h_{t+1} = v + (1 - lam / s) h_t - C h_t / s   ( = v + (I - A) h_t )

    sums ``sum_t (I - A)^t v -> A^{-1} v``, so the result ``h / s`` tends to
    ``(C + lam I)^{-1} v``. ``C h`` is evaluated on the whole training set (``batch_size=None``:
    deterministic, stops when the step is below ``tol`` relative to ``h``) or on a fresh
    seeded random minibatch per step (``batch_size=int``; ``depth`` steps, averaged over
    ``repeats``). ``scale=None`` picks ``1.5 (|mu| + lam)`` with ``mu`` the top eigenvalue
    from power iteration. Divergence raises.
    """

    name = "lissa"
    curvatures = ("ggn", "hessian", "fisher")

    def __init__(
        self,
        *,
        depth: int = 1000,
        repeats: int = 1,
        batch_size: int | None = None,
        scale: float | None = None,
        tol: float = 1e-7,
        power_iters: int = 20,
        seed: int = 0,
        block: int = 128,
    ) -> None:
        self.depth = check_option(depth, "depth", int, 0)
        self.repeats = check_option(repeats, "repeats", int, 0)
        self.batch_size = (
            None if batch_size is None else check_option(batch_size, "batch_size", int, 0)
        )
        self.scale = None if scale is None else float(check_option(scale, "scale", (int, float), 0))
        self.tol = float(check_option(tol, "tol", (int, float), 0, strict=False))
        self.power_iters = check_option(power_iters, "power_iters", int, 0)
        self.seed = check_option(seed, "seed", int)
        self.block = check_option(block, "block", int, 0)
        self.op_: CurvatureOperator | None = None
        self.scale_: float | None = None
        self.progress = False

    def options(self) -> dict:
        return {
            "depth": self.depth,
            "repeats": self.repeats,
            "batch_size": self.batch_size,
            "scale": self.scale,
            "tol": self.tol,
            "power_iters": self.power_iters,
            "seed": self.seed,
            "block": self.block,
        }

    def fit(self, curvature: Curvature) -> LiSSA:
        op = self.op_ = curvature.operator()
        lam = self.damping_ = curvature.resolve(op=op)
        self.progress = curvature.progress
        scale = self.scale
        if scale is None:
            scale = 1.5 * (abs(power_iteration(op, self.power_iters, self.seed)) + lam)
        if not scale > 0:
            raise NumericalError(
                f"lissa scale must be positive, got {scale}; the curvature may be zero: set "
                "LiSSA(scale=...) or add damping."
            )
        self.scale_ = float(scale)
        return self

    def _minibatch(self) -> int | None:
        assert self.op_ is not None
        b = self.batch_size
        return None if b is None or b >= self.op_.num_examples else b

    def apply(self, Q: torch.Tensor) -> torch.Tensor:
        self._check_fitted(self.op_ is not None)
        return in_row_chunks(self._solve, Q, self.block)

    def _solve(self, V: torch.Tensor) -> torch.Tensor:
        runs = 1 if self._minibatch() is None else self.repeats
        acc = torch.zeros_like(V)
        for r in range(runs):
            acc += self._one_run(V, r)
        return check_finite_result(acc / (runs * self.scale_), "lissa")  # type: ignore[operator]

    def _one_run(self, V: torch.Tensor, run: int) -> torch.Tensor:
        op, s, lam, batch = self.op_, self.scale_, float(self.damping_), self._minibatch()  # type: ignore[arg-type]
        assert op is not None and s is not None
        gen = torch.Generator(device="cpu").manual_seed(int(self.seed) * 1_000_003 + run)
        v_norm = V.norm(dim=1)
        h = V.clone()
        converged = False
        bar = tqdm(
            desc="lissa",
            unit="it",
            disable=not self.progress,
            leave=False,
            total=self.depth if batch is not None else None,
        )
        for t in range(self.depth):
            idx = None if batch is None else torch.randperm(op.num_examples, generator=gen)[:batch]
            h_new = V + (1 - lam / s) * h - _rows_mm(op, h, idx) / s
            h_norm = h_new.norm(dim=1)
            bar.update(1)
            if not bool(torch.isfinite(h_new).all()) or bool((h_norm > 2 * (t + 2) * v_norm).any()):
                bar.close()
                raise NumericalError(
                    f"LiSSA diverged at iteration {t + 1} (scale={s:.3g}, damping={lam:.3g}): "
                    "the series only converges when 0 < C + λI <= scale. Increase the scale "
                    "(LiSSA(scale=...)), increase the damping, or use curvature='ggn'."
                )
            step = (h_new - h).norm(dim=1)
            h = h_new
            if batch is None and bool((step <= self.tol * h_norm).all()):
                converged = True
                break
        bar.close()
        if batch is None and not converged:
            warnings.warn(
                f"LiSSA did not converge in depth={self.depth} iterations (tol={self.tol:.1e}); "
                "the result is truncated. Increase depth or damping, or use solver='cg'.",
                RuntimeWarning,
                stacklevel=5,
            )
        return h
