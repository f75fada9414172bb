"""Representer points (Yeh et al. 2018) from an L2-regularised refit of the last layer.

The last ``nn.Linear`` (input ``h``, outputs ``o = W h``) is refitted on the frozen
penultimate features to the minimiser of ``(1/N) sum_i loss(W h_i, y_i) + lambda ||W||^2``.
At that stationary point ``W = sum_i alpha_i h_i^T`` with
``alpha_i = -(1/(2 lambda N)) d loss / d o_i`` ``[C]``, so every refit output decomposes
exactly over the training set: ``o_q = sum_i alpha_i (h_i . h_q)``.

**Bias (our choice).** A layer with a bias is treated as a linear map on ``[h, 1]``: the bias
is one more weight column and is regularised with the rest, so the decomposition stays
exact (``h_i . h_q + 1`` is the kernel). Without a bias nothing changes.

**Scores.** ``S[q, i] = sum_c w_qc alpha_ic (h_i . h_q)``: the training example's share of
the refit output, weighted by the query direction ``w_q``:

- cross-entropy with ``measurement="loss"`` or ``"margin"``: ``w_q`` = one-hot of the
  query's label (Yeh et al.'s choice): the share of the query's true-class logit;
- ``measurement=k`` (a logit index): one-hot of ``k``;
- anything else (mse, custom measurements): ``w_q = -d m / d o_q`` at the refit outputs, a
  first-order weighting (for mse: the residual ``y_q - o_q``).

Positive = helpful: the example pushes the refit output in the direction that lowers the
query's loss-like measurement. The refit is deterministic (L-BFGS from the trained
weights in float64); it warns if the gradient norm stays above ``tolerance``.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tdakit.curvature.kfac import output_hessians
from tdakit.errors import TdakitError, require
from tdakit.inputs import DataLike
from tdakit.methods.base import AttributionMethod
from tdakit.methods.representation import last_linear_name, layer_inputs
from tdakit.task import Task

DIRECT_NEWTON_MAX = 4096  # refit sizes C*(h+1) solved with an explicit Hessian


class Decomposition(NamedTuple):
    """``reconstructed = sum_i alpha_i (h_i . h_q)`` versus the refit layer's outputs."""

    reconstructed: torch.Tensor  # [n_query, C]
    refit_outputs: torch.Tensor  # [n_query, C]
    max_abs_error: float


class RepresenterPoints(AttributionMethod):
    """``S[q, i] = alpha_{i,c} h_i . h_q`` with ``alpha`` from an L2-regularised last-layer refit.

    Args:
        task: the model, loss and measurement (attributed ``params`` are not used: the
            method always works on ``layer``).
        l2: ``lambda > 0`` of the refit penalty ``lambda ||W||^2`` (bias included).
        layer: name of the ``nn.Linear`` whose output is the model output (default: the
            last ``nn.Linear``); its input is the representation ``h``.
        max_iter: L-BFGS iteration budget of the refit.
        tolerance: the refit counts as converged when the largest entry of the objective's
            gradient is at most this.
    """

    def __init__(
        self,
        task: Task,
        *,
        l2: float = 1e-3,
        layer: str | None = None,
        max_iter: int = 2000,
        tolerance: float = 1e-10,
        **kw,
    ) -> None:
        super().__init__(task, **kw)
        require(
            isinstance(l2, (int, float))
            and not isinstance(l2, bool)
            and math.isfinite(l2)
            and l2 > 0,
            f"l2 (lambda of the refit) must be a positive finite number, got {l2!r}.",
        )
        require(
            isinstance(max_iter, int) and max_iter > 0, f"max_iter must be > 0, got {max_iter}."
        )
        require(tolerance > 0, f"tolerance must be positive, got {tolerance!r}.")
        self.layer = layer or last_linear_name(task.model)
        module = dict(task.model.named_modules()).get(self.layer)
        require(
            isinstance(module, nn.Linear),
            f"RepresenterPoints needs layer= to name an nn.Linear (the last layer), got "
            f"{self.layer!r} ({type(module).__name__}).",
        )
        self.module: nn.Linear = module  # type: ignore[assignment]
        self.l2, self.max_iter, self.tolerance = float(l2), max_iter, float(tolerance)
        self.converged = False
        self.refit_grad_norm = math.inf

    # --- fitting -----------------------------------------------------------------------------
    def _features(self, X: torch.Tensor) -> torch.Tensor:
        """``[n, h(+1)]`` float64 representations (with the bias column of ones)."""
        H = layer_inputs(self.task.model, self.layer, X, self.batch_size).to(torch.float64)
        if self.module.bias is not None:
            H = torch.cat([H, torch.ones(len(H), 1, dtype=H.dtype, device=H.device)], 1)
        return H

    def _fit(self, X: torch.Tensor, y: torch.Tensor) -> None:
        self._check_last_layer(X[: self.batch_size])
        H = self._features(X)
        y = y.to(H.device)
        m = self.module
        W0 = m.weight.detach() if m.bias is None else torch.cat([m.weight, m.bias[:, None]], 1)
        W = W0.detach().to(torch.float64).clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [W],
            lr=1,
            max_iter=self.max_iter,
            max_eval=2 * self.max_iter,
            tolerance_grad=max(self.tolerance, 1e-7),  # Newton-CG polishes the rest
            tolerance_change=0.0,
            history_size=50,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            value = self._objective(W, H, y)
            value.backward()
            return value

        opt.step(closure)
        W = self._newton_polish(W.detach(), H, y)
        grad = torch.func.grad(self._objective)(W, H, y)
        self.refit_grad_norm = float(grad.abs().max())
        self.converged = self.refit_grad_norm <= self.tolerance
        if not self.converged:
            warnings.warn(
                f"RepresenterPoints: the last-layer refit did not converge (largest gradient "
                f"entry {self.refit_grad_norm:.2e} > tolerance {self.tolerance:.0e} after "
                f"{self.max_iter} L-BFGS iterations); the decomposition is approximate. Raise "
                "max_iter or l2.",
                RuntimeWarning,
                stacklevel=3,
            )
        O = (H @ W.T).requires_grad_(True)
        dO = torch.autograd.grad(self.task._loss(O, y).sum(), O)[0]
        self.weights, self.H = W, H
        self.alpha = -dO / (2 * self.l2 * len(H))

    def _newton_polish(self, W: torch.Tensor, H: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A few Newton steps to float64 stationarity. ``W -> H W^T`` is linear, so the
        objective's Hessian is ``(1/N) sum_i Lambda_i (x) h_i h_i^T + 2 lambda I`` with
        ``Lambda_i`` the loss Hessian in output space: solved directly (Cholesky) when
        ``W`` has at most ``DIRECT_NEWTON_MAX`` entries, else by conjugate gradients."""
        grad_fn = torch.func.grad(self._objective)
        g = grad_fn(W, H, y)
        for _ in range(5):
            if float(g.abs().max()) <= 0.01 * self.tolerance:
                break
            lam = output_hessians(self.task._loss, H @ W.T, y)
            if W.numel() <= DIRECT_NEWTON_MAX:
                step = _direct_newton_step(lam, H, g, self.l2)
            else:

                def hvp(V: torch.Tensor, lam: torch.Tensor = lam) -> torch.Tensor:
                    dO = torch.einsum("nab,nb->na", lam, H @ V.T)
                    return dO.T @ H / len(H) + 2 * self.l2 * V

                step = _conjugate_gradient(hvp, -g, iters=min(1000, g.numel()))
            trial = W + step  # near the optimum a full step; kept only if it helps
            g_trial = grad_fn(trial, H, y)
            if float(g_trial.abs().max()) >= float(g.abs().max()):
                break
            W, g = trial, g_trial
        return W

    def _objective(self, W: torch.Tensor, H: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = self.task._loss(H @ W.T, y)
        return losses.mean() + self.l2 * W.pow(2).sum()

    def _check_last_layer(self, X: torch.Tensor) -> None:
        task, m = self.task, self.module
        X = X.to(task.device)
        H = layer_inputs(task.model, self.layer, X, self.batch_size)
        with torch.no_grad():
            full = task.outputs(task.params(), X)
            last = F.linear(H, m.weight, m.bias)
        if full.shape != last.shape or not torch.allclose(full, last, rtol=1e-4, atol=1e-5):
            raise TdakitError(
                f"RepresenterPoints needs a layer whose output is the model's output, but "
                f"the output of {self.layer!r} is transformed further. Pass layer= the final "
                "nn.Linear."
            )

    # --- scoring -----------------------------------------------------------------------------
    def _fitted(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._fitted_train()
        return self.alpha, self.H

    def _directions(self, O: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
        task, C = self.task, O.shape[1]
        name = task.measurement_name
        if task.loss_name == "cross_entropy" and name in ("loss", "margin"):
            return F.one_hot(yq.long(), C).to(O.dtype)
        if name.startswith("logit["):
            k = int(name[6:-1])
            require(k < C, f"measurement logit {k} is out of range for {C} outputs.")
            return F.one_hot(torch.full_like(yq, k).long(), C).to(O.dtype)
        O = O.detach().requires_grad_(True)
        yq = yq.to(O.dtype) if yq.is_floating_point() else yq
        return -torch.autograd.grad(task._measure(O, yq).sum(), O)[0]

    def _score_fn(self, Xq: torch.Tensor, yq: torch.Tensor):
        alpha, H = self._fitted()
        Hq = self._features(Xq)
        Wq = self._directions(Hq @ self.weights.T, yq.to(H.device))
        dtype = self.task.dtype

        def block(start: int, stop: int) -> torch.Tensor:
            return ((Wq @ alpha[start:stop].T) * (Hq @ H[start:stop].T)).to(dtype)

        return block, len(Hq)

    def decomposition_check(self, queries: DataLike) -> Decomposition:
        """Compare ``sum_i alpha_i (h_i . h_q)`` with the refit outputs ``W h_q`` (float64)."""
        Xq, _ = self._queries(queries)
        alpha, H = self._fitted()
        Hq = self._features(Xq)
        rec = (Hq @ H.T) @ alpha
        out = Hq @ self.weights.T
        return Decomposition(rec, out, float((rec - out).abs().max()))


def _direct_newton_step(
    lam: torch.Tensor, H: torch.Tensor, g: torch.Tensor, l2: float
) -> torch.Tensor:
    """``-(Hessian)^-1 g`` with the explicit ``[C*h, C*h]`` Hessian, accumulated in chunks."""
    C, h = g.shape
    hess = torch.zeros(C, h, C, h, dtype=H.dtype, device=H.device)
    step = max(1, 2**24 // (C * C * h))
    for s in range(0, len(H), step):
        Hs = H[s : s + step]
        hess += torch.einsum("nab,ni,nj->aibj", lam[s : s + step], Hs, Hs)
    hess = hess.reshape(C * h, C * h) / len(H)
    hess.diagonal().add_(2 * l2)
    chol = torch.linalg.cholesky(hess)
    return -torch.cholesky_solve(g.reshape(-1, 1), chol).reshape(C, h)


def _conjugate_gradient(matvec, b: torch.Tensor, iters: int, rtol: float = 1e-13) -> torch.Tensor:
    """Solve ``A x = b`` for a symmetric positive definite operator (here: a small Hessian)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = (r * r).sum()
    stop = rtol**2 * rr
    for _ in range(iters):
        if rr <= stop:
            break
        Ap = matvec(p)
        a = rr / (p * Ap).sum()
        x, r = x + a * p, r - a * Ap
        rr, rr_old = (r * r).sum(), rr
        p = r + (rr / rr_old) * p
    return x
