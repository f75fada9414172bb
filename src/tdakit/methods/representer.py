"""Representer points (Yeh et al. 2018) from an L2-regularised refit of the last layer.

The last ``nn.Linear`` (input ``h``, outputs ``o = W h``) is refitted on the frozen
penultimate features to the minimiser of ``(1/N) sum_i loss(W h_i, y_i) + lambda ||W||^2``.
At that stationary point ``W = sum_i alpha_i h_i^T`` with
``alpha_i = -(1/(2 lambda N)) d loss / d o_i`` ``[C]``, so every refit output decomposes
exactly over the training set: ``o_q = sum_i alpha_i (h_i . h_q)``.

**Bias (our choice).** A bias is one more weight column on ``[h, 1]``, regularised with the
rest, so the decomposition stays exact.

**Scores.** ``S[q, i] = (w_q . alpha_i) (h_i . h_q)`` with the query direction ``w_q``:
the one-hot of the query's label for cross-entropy with ``measurement="loss"`` or
``"margin"`` (Yeh et al.), the one-hot of ``k`` for ``measurement=k``, otherwise
``w_q = -d m / d o_q`` at the refit outputs. As a feature method the training features are
``alpha_i (x) h_i`` and the query features ``w_q (x) h_q``.

The refit is deterministic (L-BFGS from the trained weights, then Newton steps with the
shared Cholesky or CG); it warns if the gradient stays above ``tolerance``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tdakit.data.sources import Batch, DataLike, Source, as_source
from tdakit.errors import ConfigError, require
from tdakit.features.matrix import MemoryFeatures
from tdakit.features.representations import last_linear, layer_inputs
from tdakit.methods.feature_method import FeatureMethod
from tdakit.methods.registry import register
from tdakit.preconditioners import CholeskyInverse, Identity, Preconditioner, conjugate_gradient
from tdakit.preconditioners.exact import as_dtype
from tdakit.preconditioners.operators import output_hessians
from tdakit.task import Task

DIRECT_NEWTON_MAX = 4096  # refit sizes C*(h+1) solved with an explicit Hessian


class Decomposition(NamedTuple):
    """``reconstructed = sum_i alpha_i (h_i . h_q)`` versus the refit layer's outputs."""

    reconstructed: torch.Tensor  # [n_query, C]
    refit_outputs: torch.Tensor  # [n_query, C]
    max_abs_error: float


@register
class RepresenterPoints(FeatureMethod):
    """``S[q, i] = (w_q . alpha_i) h_i . h_q`` from an L2-regularised last-layer refit.

    Args:
        task: the model, loss and measurement (attributed ``params`` are not used).
        l2: ``lambda > 0`` of the refit penalty ``lambda ||W||^2`` (bias included).
        layer: name of the ``nn.Linear`` whose output is the model output (default: the
            last ``nn.Linear`` in the forward pass); its input is the representation ``h``.
        max_iter: L-BFGS iteration budget of the refit.
        tolerance: the refit has converged when its largest gradient entry is at most this.
        compute_dtype: dtype of the refit (float64).
    """

    name = "representer"

    def __init__(
        self,
        task: Task,
        *,
        l2: float = 1e-3,
        layer: str | None = None,
        max_iter: int = 2000,
        tolerance: float = 1e-10,
        compute_dtype: torch.dtype | str = torch.float64,
        **kw: Any,
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
        require(self.projector is None, "RepresenterPoints takes no projection.")
        if layer is not None:
            self._module(layer)
        self.l2, self.layer, self.max_iter, self.tolerance = float(l2), layer, max_iter, tolerance
        self.compute_dtype = as_dtype(compute_dtype)
        self.layer_: str | None = layer
        self.converged_ = False
        self.refit_grad_norm_ = math.inf

    def _module(self, name: str) -> nn.Linear:
        module = dict(self.task.model.named_modules()).get(name)  # type: ignore[union-attr]
        require(
            isinstance(module, nn.Linear),
            f"RepresenterPoints needs layer= to name an nn.Linear (the last layer), got "
            f"{name!r} ({type(module).__name__}).",
        )
        return module  # type: ignore[return-value]

    # --- representations ------------------------------------------------------------------
    def _hidden(self, batch: Batch) -> torch.Tensor:
        """``[B, h(+1)]`` representations in the compute dtype (bias column of ones)."""
        H = layer_inputs(self.task, self.layer_, batch.inputs).to(self.compute_dtype)  # type: ignore[arg-type]
        if self._module(self.layer_).bias is not None:  # type: ignore[arg-type]
            H = torch.cat([H, torch.ones(len(H), 1, dtype=H.dtype, device=H.device)], 1)
        return H

    def _featurize(self, batch: Batch, objective: str) -> torch.Tensor:
        H = self._hidden(batch)
        W = self._directions(H @ self.weights_.T, batch.targets)
        return (W.unsqueeze(2) * H.unsqueeze(1)).reshape(len(H), -1)

    # --- fitting ----------------------------------------------------------------------------
    def _fit(self, source: Source) -> None:
        task = self.task
        assert task is not None
        batches = list(source.batches(task, self.batch_size))
        if self.layer is None:
            self.layer_ = last_linear(task, batches[0].inputs)
        self._check_last_layer(batches[0])
        H = torch.cat([self._hidden(b) for b in batches])
        y = torch.cat([b.targets for b in batches])
        W = self._refit(H, y)
        O = (H @ W.T).requires_grad_(True)
        dO = torch.autograd.grad(task._loss(O, y).sum(), O)[0]
        alpha = -dO / (2 * self.l2 * len(H))
        self.weights_, self.alpha_, self.H_ = W, alpha, H
        self.features_ = MemoryFeatures((alpha.unsqueeze(2) * H.unsqueeze(1)).reshape(len(H), -1))
        self.preconditioner_ = self._fit_preconditioner(source)

    def _fit_preconditioner(self, source: Source) -> Preconditioner:
        return Identity().fit()

    def _refit(self, H: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = self._module(self.layer_)  # type: ignore[arg-type]
        W0 = m.weight.detach() if m.bias is None else torch.cat([m.weight, m.bias[:, None]], 1)
        W = W0.detach().to(self.compute_dtype).clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [W],
            lr=1,
            max_iter=self.max_iter,
            max_eval=2 * self.max_iter,
            tolerance_grad=max(self.tolerance, 1e-7),  # Newton polishes the rest
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
        W = self._newton(W.detach(), H, y, iters=5)
        self.refit_grad_norm_ = float(torch.func.grad(self._objective)(W, H, y).abs().max())
        self.converged_ = self.refit_grad_norm_ <= self.tolerance
        if not self.converged_:
            warnings.warn(
                f"RepresenterPoints: the last-layer refit did not converge (largest gradient "
                f"entry {self.refit_grad_norm_:.2e} > tolerance {self.tolerance:.0e} after "
                f"{self.max_iter} L-BFGS iterations); the decomposition is approximate. Raise "
                "max_iter or l2.",
                RuntimeWarning,
                stacklevel=4,
            )
        return W

    def _newton(
        self, W: torch.Tensor, H: torch.Tensor, y: torch.Tensor, iters: int
    ) -> torch.Tensor:
        """Damped Newton steps to stationarity. ``W -> H W^T`` is linear, so the Hessian is
        ``(1/N) sum_i Lambda_i (x) h_i h_i^T + 2 lambda I`` (``Lambda_i`` the output-space loss
        Hessian): Cholesky when ``W`` is small, else conjugate gradients. A step is halved
        until the objective or the gradient decreases (the objective is convex)."""
        grad_fn = torch.func.grad(self._objective)
        g = grad_fn(W, H, y)
        for _ in range(iters):
            if float(g.abs().max()) <= 0.01 * self.tolerance:
                break
            lam = output_hessians(self.task._loss, H @ W.T, y).to(H.dtype)  # type: ignore[union-attr]
            if W.numel() <= DIRECT_NEWTON_MAX:
                inverse = CholeskyInverse(
                    _gauss_newton(lam, H), 2 * self.l2, "refit Hessian", H.dtype
                )
                step = -inverse.solve(g.reshape(1, -1)).reshape(g.shape)
            else:

                def hvp(
                    V: torch.Tensor, lam: torch.Tensor = lam, shape: torch.Size = g.shape
                ) -> torch.Tensor:
                    V = V.reshape(-1, *shape)
                    dO = torch.einsum("nab,rnb->rna", lam, H @ V.transpose(1, 2))
                    out = dO.transpose(1, 2) @ H / len(H) + 2 * self.l2 * V
                    return out.reshape(len(V), -1)

                flat, _ = conjugate_gradient(
                    hvp, -g.reshape(1, -1), tol=1e-13, max_iter=min(1000, g.numel())
                )
                step = flat.reshape(g.shape)
            f0, g0 = float(self._objective(W, H, y)), float(g.abs().max())
            t, accepted = 1.0, False
            while t >= 1e-4 and not accepted:
                trial = W + t * step
                g_trial = grad_fn(trial, H, y)
                accepted = (
                    float(self._objective(trial, H, y)) < f0 or float(g_trial.abs().max()) < g0
                )
                t /= 2
            if not accepted:
                break
            W, g = trial, g_trial
        return W

    def _objective(self, W: torch.Tensor, H: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = self.task._loss(H @ W.T, y)  # type: ignore[union-attr]
        return losses.mean() + self.l2 * W.pow(2).sum()

    def _check_last_layer(self, batch: Batch) -> None:
        task, m = self.task, self._module(self.layer_)  # type: ignore[arg-type]
        H = layer_inputs(task, self.layer_, batch.inputs)  # type: ignore[arg-type]
        with torch.no_grad():
            full = task.outputs(task.params(), batch.inputs)  # type: ignore[union-attr]
            last = F.linear(H, m.weight, m.bias)
        if full.shape != last.shape or not torch.allclose(full, last, rtol=1e-4, atol=1e-5):
            raise ConfigError(
                f"RepresenterPoints needs a layer whose output is the model's output, but "
                f"the output of {self.layer_!r} is transformed further. Pass layer= the final "
                "nn.Linear."
            )

    # --- queries ------------------------------------------------------------------------------
    def _directions(self, O: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
        task, C = self.task, O.shape[1]
        name = task.measurement_name  # type: ignore[union-attr]
        if task.loss_name == "cross_entropy" and name in ("loss", "margin"):  # type: ignore[union-attr]
            return F.one_hot(yq.long(), C).to(O.dtype)
        if name.startswith("logit["):
            return F.one_hot(torch.full_like(yq, int(name[6:-1])).long(), C).to(O.dtype)
        O = O.detach().requires_grad_(True)
        yq = yq.to(O.dtype) if yq.is_floating_point() else yq
        with torch.enable_grad():
            return -torch.autograd.grad(task._measure(O, yq).sum(), O)[0]  # type: ignore[union-attr]

    def _score_transform(self, S: torch.Tensor) -> torch.Tensor:
        # computed in compute_dtype; scores, top-k and self-scores come in the model's dtype
        return S.to(self.task.dtype)  # type: ignore[union-attr]

    def decomposition_check(self, queries: DataLike) -> Decomposition:
        """Compare ``sum_i alpha_i (h_i . h_q)`` with the refit outputs ``W h_q``."""
        self._fitted()
        source = as_source(queries, "query")
        Hq = torch.cat([self._hidden(b) for b in source.batches(self.task, self.batch_size)])
        rec = (Hq @ self.H_.T) @ self.alpha_
        out = Hq @ self.weights_.T
        return Decomposition(rec, out, float((rec - out).abs().max()))


def _gauss_newton(lam: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``(1/N) sum_i Lambda_i (x) h_i h_i^T`` as a ``[C*h, C*h]`` matrix, in chunks."""
    C, h = lam.shape[1], H.shape[1]
    hess = torch.zeros(C, h, C, h, dtype=H.dtype, device=H.device)
    step = max(1, 2**24 // (C * C * h))
    for s in range(0, len(H), step):
        Hs = H[s : s + step]
        hess += torch.einsum("nab,ni,nj->aibj", lam[s : s + step], Hs, Hs)
    return hess.reshape(C * h, C * h) / len(H)
