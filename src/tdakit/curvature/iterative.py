"""Iterative inverse-curvature solvers on curvature-vector products: CG and LiSSA.

Both take a :class:`~tdakit.curvature.operators.CurvatureOperator` ``C`` and solve
``(C + lam I) x = g`` for a block of right-hand sides at once (one pass over the data
per iteration serves every column).
"""

from __future__ import annotations

import warnings

import torch
from tqdm.auto import tqdm

from tdakit.curvature.operators import CurvatureOperator
from tdakit.curvature.solvers import (
    check_damping,
    check_finite_result,
    in_row_chunks,
    not_positive_definite,
)
from tdakit.errors import TdakitError, require


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


class CGSolver:
    """Batched conjugate gradient on ``(C + lam I) x = g`` for each row ``g`` of a block.

    Columns stop individually once ``|r| <= tol |g|``; those still above after ``max_iter``
    iterations are reported with a warning (the last iterate is returned, finite).
    A non-positive curvature ``p^T (C + lam I) p <= 0`` along a search direction raises.
    """

    def __init__(
        self,
        op: CurvatureOperator,
        damping: float,
        *,
        tol: float = 1e-6,
        max_iter: int = 1000,
        block: int = 128,
        progress: bool = False,
    ) -> None:
        require(tol > 0 and max_iter > 0, f"cg needs tol > 0 and max_iter > 0 ({tol}, {max_iter}).")
        self.op, self.damping = op, check_damping(damping)
        self.tol, self.max_iter, self.block, self.progress = tol, max_iter, block, progress

    def apply(self, G: torch.Tensor) -> torch.Tensor:
        return in_row_chunks(self._solve, G, self.block)

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        lam, op = self.damping, self.op
        X = torch.zeros_like(B)
        R = B.clone()
        Pd = R.clone()
        rs = (R * R).sum(1)
        target = self.tol * B.norm(dim=1)
        active = rs.sqrt() > target
        bar = tqdm(range(self.max_iter), desc="cg", disable=not self.progress, leave=False)
        for _ in bar:
            if not bool(active.any()):
                break
            idx = active.nonzero().squeeze(1)
            Pa = Pd[idx]
            APa = _rows_mm(op, Pa) + lam * Pa
            pAp = (Pa * APa).sum(1)
            if bool((pAp <= 0).any()) or not bool(torch.isfinite(pAp).all()):
                raise TdakitError(not_positive_definite(op.kind, lam, where=" (found by CG)"))
            alpha = rs[idx] / pAp
            X[idx] += alpha[:, None] * Pa
            R[idx] -= alpha[:, None] * APa
            rs_new = (R[idx] * R[idx]).sum(1)
            Pd[idx] = R[idx] + (rs_new / rs[idx])[:, None] * Pa
            rs[idx] = rs_new
            active[idx] = rs_new.sqrt() > target[idx]
        if bool(active.any()):
            rel = (rs.sqrt() / B.norm(dim=1).clamp_min(1e-300))[active].max()
            warnings.warn(
                f"CG did not converge for {int(active.sum())} of {len(B)} vectors after "
                f"{self.max_iter} iterations (largest relative residual {float(rel):.2e} > "
                f"tol {self.tol:.1e}); increase max_iter or the damping.",
                RuntimeWarning,
                stacklevel=3,
            )
        return check_finite_result(X, "cg")


class LissaSolver:
    """LiSSA: a truncated Neumann series for ``(C + lam I)^{-1}``.

    With scale ``s >= lambda_max(C + lam I)`` and ``A = (C + lam I) / s`` the iteration

        h_0 = v,   h_{t+1} = v + (1 - lam / s) h_t - C h_t / s   ( = v + (I - A) h_t )

    sums ``sum_t (I - A)^t v -> A^{-1} v``, so the result ``h / s`` tends to
    ``(C + lam I)^{-1} v`` (fixed point: ``(C + lam I) h = s v``). ``C h`` is evaluated on
    the whole training set (``batch_size=None``: deterministic, stops when the step is below
    ``tol`` relative to ``h``) or on a fresh random minibatch per step (``batch_size=int``,
    seeded; ``depth`` steps, averaged over ``repeats``).

    ``scale=None`` picks ``1.5 * (|mu| + lam)`` with ``mu`` the top eigenvalue from power
    iteration. Divergence (``|h_t| > 2 (t + 1) |v|``, impossible when ``0 < A <= I``) raises.
    """

    def __init__(
        self,
        op: CurvatureOperator,
        damping: float,
        *,
        depth: int = 1000,
        repeats: int = 1,
        batch_size: int | None = None,
        scale: float | None = None,
        tol: float = 1e-7,
        power_iters: int = 20,
        seed: int = 0,
        block: int = 128,
        progress: bool = False,
    ) -> None:
        require(depth > 0 and repeats > 0, f"lissa needs depth, repeats > 0 ({depth}, {repeats}).")
        require(
            batch_size is None or batch_size > 0,
            f"lissa batch_size must be None or positive, got {batch_size}.",
        )
        self.op, self.damping = op, check_damping(damping)
        self.depth, self.repeats, self.tol, self.seed = depth, repeats, tol, seed
        self.batch_size = (
            None if batch_size is None or batch_size >= op.num_examples else batch_size
        )
        self.block, self.progress = block, progress
        if scale is None:
            top = power_iteration(op, power_iters, seed)
            scale = 1.5 * (abs(top) + self.damping)
        require(
            scale > 0 and scale == scale,
            f"lissa scale must be positive, got {scale}; the curvature may be zero: set "
            "scale explicitly or add damping.",
        )
        self.scale = float(scale)

    def apply(self, G: torch.Tensor) -> torch.Tensor:
        return in_row_chunks(self._solve, G, self.block)

    def _solve(self, V: torch.Tensor) -> torch.Tensor:
        deterministic = self.batch_size is None
        runs = 1 if deterministic else self.repeats
        acc = torch.zeros_like(V)
        for r in range(runs):
            acc += self._one_run(V, r)
        return check_finite_result(acc / (runs * self.scale), "lissa")

    def _one_run(self, V: torch.Tensor, run: int) -> torch.Tensor:
        s, lam, op = self.scale, self.damping, self.op
        gen = torch.Generator(device="cpu").manual_seed(int(self.seed) * 1_000_003 + run)
        v_norm = V.norm(dim=1)
        h = V.clone()
        converged = False
        bar = tqdm(range(self.depth), desc="lissa", disable=not self.progress, leave=False)
        for t in bar:
            idx = None
            if self.batch_size is not None:
                idx = torch.randperm(op.num_examples, generator=gen)[: self.batch_size]
            h_new = V + (1 - lam / s) * h - _rows_mm(op, h, idx) / s
            h_norm = h_new.norm(dim=1)
            if not bool(torch.isfinite(h_new).all()) or bool((h_norm > 2 * (t + 2) * v_norm).any()):
                raise TdakitError(
                    f"LiSSA diverged at iteration {t + 1} (scale={s:.3g}, damping={lam:.3g}): "
                    "the series only converges when 0 < C + λI <= scale. Increase the scale "
                    "(scale=...), increase the damping, or use curvature='ggn'."
                )
            step = (h_new - h).norm(dim=1)
            h = h_new
            if self.batch_size is None and bool((step <= self.tol * h_norm).all()):
                converged = True
                break
        if self.batch_size is None and not converged:
            warnings.warn(
                f"LiSSA did not converge in depth={self.depth} iterations (tol={self.tol:.1e}); "
                "the result is truncated. Increase depth or damping, or use solver='cg'.",
                RuntimeWarning,
                stacklevel=4,
            )
        return h
