"""A Gaussian posterior over the (projected) weights of the linearised network, and the
information that training examples carry about a query (docs/methods.md, section 5).

Each training example ``i`` contributes ``B_i = Phi_i^T L_i`` (``k x C``): its projected
tangent features ``Phi_i`` (``C x k``, the Jacobian of its ``C`` outputs) times a square root
``L_i L_i^T = Lambda_i`` of its likelihood precision (softmax: ``diag(p) - p p^T``; Gaussian:
``I``; Bernoulli: ``p (1 - p)``). The posterior precision is

    A = delta I + (1 / sigma^2) sum_i B_i B_i^T      (sigma^2 = 1 unless Gaussian)

and a query with features ``Phi_*`` (``C* x k``) has latent predictive covariance
``Sigma_* = Phi_* A^-1 Phi_*^T``. Removing a subset ``S`` is a low-rank downdate of ``A``;
the entropy change is computed with the matrix determinant lemma, never by refitting.

Hyperparameters (documented rules; neither looks at test data): ``noise="auto"`` (Gaussian
likelihood) is the maximum-likelihood noise at the trained weights, the mean squared
training residual; ``prior_precision="auto"`` is the unit-information rule
``delta = trace(sum_i B_i B_i^T / sigma^2) / (N k)``: the prior is worth one average
training example. (The marginal likelihood itself is degenerate here: with the prior centred
at the trained weights, whose residuals are orthogonal to the tangent features, it always
prefers ``delta -> infinity``; ``log_evidence`` is still reported for given values.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from tdakit.errors import ConfigError, NumericalError, require
from tdakit.preconditioners.base import Curvature, Preconditioner, check_option
from tdakit.preconditioners.exact import CholeskyInverse, as_dtype, dtype_name

Blocks = Callable[[], Iterator[tuple[int, int, torch.Tensor]]]  # (start, stop, B [b, C, k])


def _auto_or_positive(value: float | str, name: str) -> float | str:
    if value == "auto":
        return value
    return float(check_option(value, name, (int, float), 0))


class GaussianPosterior(Preconditioner):
    """``A = delta I + sum_i B_i B_i^T / sigma^2`` over ``k`` projected weights.

    Args:
        prior_precision: ``delta > 0`` or ``"auto"`` (unit information, module docstring).
        noise: ``sigma^2 > 0`` for a Gaussian likelihood, or ``"auto"`` (the mean squared
            training residual; ``1`` otherwise, where ``Lambda_i`` already is the likelihood
            precision).
        compute_dtype: dtype of the ``k x k`` factorisation.

    ``fit`` reads ``curvature.features`` as blocks ``B [b, C, k]`` (``B_i^T`` per example)
    and, for the evidence, ``curvature.residuals`` blocks ``r [b, C]`` (targets minus outputs).
    """

    name = "gaussian_posterior"
    curvatures = ("ggn",)
    needs_features = True

    def __init__(
        self,
        *,
        prior_precision: float | str = "auto",
        noise: float | str = "auto",
        gaussian: bool = False,
        compute_dtype: torch.dtype | str = torch.float64,
    ) -> None:
        self.prior_precision = _auto_or_positive(prior_precision, "prior_precision")
        self.noise = _auto_or_positive(noise, "noise")
        self.gaussian = bool(gaussian)
        require(
            self.gaussian or noise == "auto" or float(noise) == 1.0,
            "noise (sigma^2) applies to a Gaussian likelihood only; for softmax/Bernoulli "
            "likelihoods the precision comes from the model's probabilities.",
        )
        self.compute_dtype = as_dtype(compute_dtype)
        self.inverse_: CholeskyInverse | None = None

    def options(self) -> dict:
        return {
            "prior_precision": self.prior_precision,
            "noise": self.noise,
            "gaussian": self.gaussian,
            "compute_dtype": dtype_name(self.compute_dtype),
        }

    # --- fitting ----------------------------------------------------------------------------
    def fit(self, curvature: Curvature) -> GaussianPosterior:
        return self.fit_blocks(curvature.iter_features, getattr(curvature, "residuals", None))

    def fit_blocks(self, blocks: Blocks, residuals: Blocks | None = None) -> GaussianPosterior:
        """Fit from ``blocks()`` yielding ``(start, stop, B [b, C, k])`` and, for the
        Gaussian evidence, ``residuals()`` yielding ``(start, stop, r [b, C])``."""
        dt = self.compute_dtype
        gram = proj = None
        n = n_out = 0
        rr = 0.0
        res = residuals() if residuals is not None else None
        for _, _, B in blocks():
            rows = B.to(dt).reshape(-1, B.shape[-1])
            gram = rows.T @ rows if gram is None else gram.addmm_(rows.T, rows)
            n, n_out = n + len(B), n_out + rows.shape[0]
            if res is not None:
                r = next(res)[2].to(dt).reshape(-1)
                proj = rows.T @ r if proj is None else proj + rows.T @ r
                rr += float(r @ r)
        require(gram is not None, "The Gaussian posterior needs at least one training example.")
        assert gram is not None
        self.k_, self.n_train_ = gram.shape[0], n
        delta, noise = self._hyperparameters(gram, n, n_out, proj, rr)
        self.prior_precision_, self.noise_ = delta, noise
        self.gram_ = gram
        self.inverse_ = CholeskyInverse(gram / noise, delta, "posterior precision", dt)
        self.damping_ = delta
        return self

    def _hyperparameters(self, gram, n, n_out, proj, rr) -> tuple[float, float]:
        noise = 1.0
        if self.gaussian:
            if self.noise == "auto":
                require(
                    proj is not None,
                    "noise='auto' is the mean squared training residual: it needs the "
                    "residuals (targets minus outputs); pass noise= explicitly otherwise.",
                )
                noise = max(rr / n_out, torch.finfo(gram.dtype).tiny)
            else:
                noise = float(self.noise)
        unit = float(gram.diagonal().sum()) / (n * gram.shape[0] * noise)
        delta = unit if self.prior_precision == "auto" else float(self.prior_precision)
        require(
            delta > 0,
            "The unit-information prior is 0 (all tangent features are zero); pass "
            "prior_precision= explicitly.",
            NumericalError,
        )
        if self.gaussian and proj is not None:
            s, U = torch.linalg.eigh(gram)
            b2 = (U.T @ proj).pow(2)
            self.log_evidence_ = log_evidence(
                s.clamp_min(0).cpu().numpy(), b2.cpu().numpy(), rr, n_out, delta, noise
            )
        return delta, noise

    # --- applying -------------------------------------------------------------------------
    def _inv(self) -> CholeskyInverse:
        self._check_fitted(self.inverse_ is not None)
        assert self.inverse_ is not None
        return self.inverse_

    def apply(self, Q: torch.Tensor) -> torch.Tensor:
        return self._inv().solve(Q)

    def whiten(self, X: torch.Tensor) -> torch.Tensor:
        """``L^-1 x`` for the rows of ``X [..., k]`` (``x^T A^-1 y = <L^-1 x, L^-1 y>``)."""
        shape = X.shape
        return self._inv().half_solve(X.reshape(-1, shape[-1])).reshape(shape)

    def logdet(self) -> float:
        return self._inv().logdet()

    def predictive_covariance(self, Phi: torch.Tensor, observed: bool = False) -> torch.Tensor:
        """``Phi_* A^-1 Phi_*^T`` (``+ sigma^2 I`` when ``observed``) for ``Phi [n, C*, k]``."""
        w = self.whiten(Phi.to(self.compute_dtype))
        cov = w @ w.transpose(1, 2)
        if observed:
            require(self.gaussian, "Observation noise applies to a Gaussian likelihood only.")
            cov = cov + self.noise_ * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        return cov


def log_evidence(s, b2, rr: float, n: int, delta: float, noise: float) -> float:
    """Log marginal likelihood of ``r ~ N(0, noise I + Phi Phi^T / delta)`` from the
    eigenvalues ``s`` of ``Phi^T Phi`` and ``b2 = (U^T Phi^T r)^2``."""
    quad = (rr - float(np.sum(b2 / (s + delta * noise)))) / noise
    logdet = n * math.log(noise) + float(np.sum(np.log1p(s / (delta * noise))))
    return -0.5 * (quad + logdet + n * math.log(2 * math.pi))


def information(
    S: torch.Tensor, U: torch.Tensor, sigma_inv: torch.Tensor, sign: int
) -> torch.Tensor:
    """Information in nats of removing (``sign=+1``, information loss) or adding (``sign=-1``,
    information gain) each candidate: ``1/2 s [logdet(M + s U^T Sigma^-1 U) - logdet M]`` with
    ``M = I - s S``; ``S [.., C, C]``, ``U [.., C*, C]``, ``sigma_inv [.., C*, C*]``."""
    eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
    M = eye - sign * S
    inner = M + sign * (U.transpose(-1, -2) @ sigma_inv @ U)
    a, b = torch.linalg.slogdet(inner), torch.linalg.slogdet(M)
    if bool((a.sign <= 0).any()) or bool((b.sign <= 0).any()):
        raise NumericalError(
            "A downdated posterior is not positive definite (an example carries all the "
            "posterior's information); increase prior_precision."
        )
    return 0.5 * sign * (a.logabsdet - b.logabsdet)


def check_objective(objective: str) -> int:
    """``"loss"`` (remove from the posterior) -> +1, ``"gain"`` (add to the prior) -> -1."""
    if objective not in ("loss", "gain"):
        raise ConfigError(f"objective must be 'loss' or 'gain', got {objective!r}.")
    return 1 if objective == "loss" else -1
