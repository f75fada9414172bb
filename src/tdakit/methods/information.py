"""Information-theoretic attribution under a Gaussian posterior (docs/methods.md, section 5).

- :class:`InformationLoss`: the entropy increase (nats) of a query's predictive
  distribution when a training example is removed from the posterior; the multi-output
  tangent GP (softmax GGN for classification, so a query's covariance is ``C x C``) or the
  scalar gradient GP. ``select_subset`` picks the most informative *subsets* greedily.
- :class:`InformationGain`: the information a single example carries about the query under
  the prior, with the variance correction ``u_i = phi_i / sqrt(|phi_i|^2 + delta)``; it is
  monotone in ``<u_i, phi_*>``, so retrieval is one inner-product search in a vector index.

Scores are in nats and non-negative; with ``signed=True`` (default) they carry the sign of
the influence direction ``g_*^T A^-1 g_i`` (positive = helpful, as for every method).
"""

from __future__ import annotations

from typing import Any

import torch

from tdakit.data.sources import Batch, DataLike, Source
from tdakit.errors import ConfigError, require
from tdakit.features.tangent import split_rows, tangent_rows
from tdakit.methods.feature_method import FeatureMethod
from tdakit.methods.gradient import GradDot
from tdakit.methods.registry import register
from tdakit.preconditioners.gp import GaussianPosterior, check_objective, information
from tdakit.preconditioners.greedy import Selection, greedy_select
from tdakit.task import Task

_ELEMENTS = 2**23  # cap on [n_query, block, C*, C] intermediates


@register
class InformationLoss(FeatureMethod):
    """Single-example information loss ``IL({i})`` at each query, and greedy subsets.

    Args:
        task: model and loss (``cross_entropy`` -> softmax likelihood, ``mse`` -> Gaussian).
        features: ``"tangent"`` (Jacobians of the ``C`` outputs) or ``"gradient"`` (the loss
            gradient: a scalar-output GP).
        projection: dimension ``k`` of the projected features (``None``: all parameters).
        prior_precision, noise: of :class:`~tdakit.preconditioners.gp.GaussianPosterior`
            (``"auto"``: the residual variance and the unit-information rule; see
            :mod:`tdakit.preconditioners.gp`).
        observed: use the observation-noise (``y_*``) entropy instead of the latent ``f_*``
            (Gaussian likelihood only).
        signed: give scores the sign of the influence direction (else plain nats >= 0).
    """

    name = "information_loss"

    def __init__(
        self,
        task: Task,
        *,
        features: str = "tangent",
        projection: Any = 256,
        prior_precision: float | str = "auto",
        noise: float | str = "auto",
        observed: bool = False,
        signed: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(task, projection=projection, **kw)
        require(
            features in ("tangent", "gradient"),
            f"features must be 'tangent' or 'gradient', got {features!r}.",
        )
        self.features, self.observed, self.signed = features, bool(observed), bool(signed)
        self.prior_precision, self.noise = prior_precision, noise
        self.gaussian = task.loss_name == "mse" and features == "tangent"
        require(
            not observed or self.gaussian,
            "observed=True needs a Gaussian likelihood (loss='mse', tangent features).",
        )
        GaussianPosterior(prior_precision=prior_precision, noise=noise, gaussian=self.gaussian)

    def feature_config(self) -> dict:
        return {**super().feature_config(), "features": self.features}

    @property
    def outputs(self) -> int:
        return self.outputs_

    def _fit(self, source: Source) -> None:
        first = next(iter(source.batches(self.task, 1)))
        out = self.task.outputs(self.task.params(), first.inputs)  # type: ignore[union-attr]
        self.outputs_ = 1 if self.features == "gradient" else out.reshape(1, -1).shape[1]
        super()._fit(source)

    def _featurize(self, batch: Batch, objective: str) -> torch.Tensor:
        return tangent_rows(self.task, batch, self.projector, objective, self.features)  # type: ignore[arg-type]

    def _fit_preconditioner(self, source: Source) -> GaussianPosterior:
        C = self.outputs_
        gp = GaussianPosterior(
            prior_precision=self.prior_precision, noise=self.noise, gaussian=self.gaussian
        )

        def blocks():
            for a, b, T in self.features_.blocks(self.block_size):  # type: ignore[union-attr]
                R = split_rows(T, C)
                yield a, b, R.L.transpose(1, 2) @ R.Phi

        def residuals():
            for a, b, T in self.features_.blocks(self.block_size):  # type: ignore[union-attr]
                yield a, b, split_rows(T, C).r

        return gp.fit_blocks(blocks, residuals if self.gaussian else None)

    # --- whitened quantities ------------------------------------------------------------------
    @property
    def posterior_(self) -> GaussianPosterior:
        return self._fitted()[1]  # type: ignore[return-value]

    def _train_white(self, T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened ``W [b, C, k]`` (rows of ``L^-1 B_i / sigma``) and directions ``[b, k]``."""
        gp, R = self.posterior_, split_rows(T, self.outputs_)
        B = R.L.transpose(1, 2) @ R.Phi / gp.noise_**0.5
        g = (R.Phi * R.e.unsqueeze(2)).sum(1)
        return gp.whiten(B.to(gp.compute_dtype)), gp.whiten(g.to(gp.compute_dtype))

    def _query_state(self, batches: list[Batch]) -> dict:
        gp = self.posterior_
        R = split_rows(torch.cat([self._featurize(b, "query") for b in batches]), self.outputs_)
        Phi = R.Phi.to(gp.compute_dtype)
        cov = gp.predictive_covariance(Phi, observed=self.observed)
        return {
            "Wq": gp.whiten(Phi),
            "Phi": Phi,
            "sigma_inv": torch.linalg.inv(cov),
            "dq": gp.whiten((Phi * R.e.to(Phi.dtype).unsqueeze(2)).sum(1)),
            "dtype": R.Phi.dtype,
        }

    def _scores_for(self, state: dict, T: torch.Tensor) -> torch.Tensor:
        W, d = self._train_white(T)
        Wq, sinv = state["Wq"], state["sigma_inv"]
        step = max(1, _ELEMENTS // max(1, len(Wq) * W.shape[1] * Wq.shape[1]))
        parts = []
        for a in range(0, len(W), step):
            Wb = W[a : a + step]
            S = (Wb @ Wb.transpose(1, 2)).unsqueeze(0)
            U = torch.einsum("qck,bdk->qbcd", Wq, Wb)
            parts.append(information(S, U, sinv[:, None], +1))
        out = torch.cat(parts, dim=1)
        if self.signed:
            out = out * torch.sign(state["dq"] @ d.T)
        return out.to(state["dtype"])

    def _train_scores(self, state: dict, per_model: bool):
        require(not per_model, "InformationLoss is not an ensemble method.")
        for a, b, T in self.features_.blocks(self.block_size):  # type: ignore[union-attr]
            yield a, b, self._scores_for(state, T)

    def _train_range(self, state: dict, start: int, stop: int) -> torch.Tensor:
        S = self._scores_for(state, self.features_.rows(start, stop))  # type: ignore[union-attr]
        return torch.diagonal(S)

    def scores(self, queries: DataLike) -> torch.Tensor:
        return super(FeatureMethod, self).scores(queries)

    def build_index(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigError(
            "InformationLoss scores are not inner products, so a vector index cannot rank "
            "them; use InformationGain (variance-corrected inner products) for retrieval, "
            "then select_subset(..., candidates=...) to re-rank the candidates."
        )

    # --- subsets --------------------------------------------------------------------------------
    def subset_information(
        self, queries: DataLike, subset: torch.Tensor, *, objective: str = "loss"
    ) -> torch.Tensor:
        """Information ``[n_query]`` (nats) of the training subset ``subset`` (positions) at
        each query: removed from the posterior (``"loss"``) or alone added to the prior
        (``"gain"``), by one low-rank update of rank ``C |S|`` (never a refit)."""
        sign = check_objective(objective)
        gp = self.posterior_
        idx = torch.as_tensor(subset).long().reshape(-1)
        require(
            len(idx) > 0 and len(idx.unique()) == len(idx), "subset must be distinct positions."
        )
        R = split_rows(
            torch.cat([self.features_.rows(int(i), int(i) + 1) for i in idx]), self.outputs_
        )
        B = (R.L.transpose(1, 2) @ R.Phi).to(gp.compute_dtype) / gp.noise_**0.5
        scale = gp.prior_precision_**-0.5
        W = (gp.whiten(B) if sign > 0 else B * scale).reshape(-1, B.shape[-1])  # [m C, k]
        out = []
        for _, _, state in self._query_states(queries):
            wq = state["Wq"] if sign > 0 else state["Phi"] * scale  # [n, C*, k]
            cov = wq @ wq.transpose(1, 2)
            if self.observed:
                cov = cov + gp.noise_ * torch.eye(cov.shape[-1], dtype=cov.dtype)
            U = wq @ W.T  # [n, C*, m C]
            out.append(information((W @ W.T).unsqueeze(0), U, torch.linalg.inv(cov), sign))
        return torch.cat(out)

    def select_subset(
        self,
        queries: DataLike,
        k: int,
        *,
        objective: str = "loss",
        candidates: torch.Tensor | None = None,
    ) -> list[Selection]:
        """Greedy ``k``-subsets per query: ``objective="loss"`` (information lost when the
        subset is removed from the posterior) or ``"gain"`` (information the subset alone
        adds to the prior). ``candidates`` restricts the search to those training positions.
        Each :class:`~tdakit.preconditioners.greedy.Selection` holds the positions in pick
        order, the marginal gains (nats) and the total."""
        sign = check_objective(objective)
        gp = self.posterior_
        pool = (
            torch.arange(self.n_train)
            if candidates is None
            else torch.as_tensor(candidates).long().reshape(-1)
        )
        require(1 <= k <= len(pool), f"k must be between 1 and {len(pool)}, got {k!r}.")
        rows = lambda idx: self.features_.rows(int(idx), int(idx) + 1)  # noqa: E731
        scale = 1.0 if sign > 0 else (gp.prior_precision_**-0.5)

        def white(T: torch.Tensor) -> torch.Tensor:
            R = split_rows(T, self.outputs_)
            B = (R.L.transpose(1, 2) @ R.Phi).to(gp.compute_dtype) / gp.noise_**0.5
            return (gp.whiten(B) if sign > 0 else B * scale).transpose(1, 2)  # [b, k, C]

        def blocks():
            for a in range(0, len(pool), self.block_size):
                idx = pool[a : a + self.block_size]
                T = (
                    torch.cat([rows(i) for i in idx])
                    if candidates is not None
                    else self.features_.rows(int(idx[0]), int(idx[-1]) + 1)
                )
                yield a, a + len(idx), white(T)

        out = []
        for _, _, state in self._query_states(queries):
            for q in range(len(state["Wq"])):
                wq = state["Wq"][q] if sign > 0 else state["Phi"][q] * scale
                noise = gp.noise_ if self.observed else 0.0
                sel = greedy_select(
                    wq.T, blocks, lambda j: white(rows(pool[j]))[0], len(pool), k, sign, noise
                )
                out.append(Selection(pool[sel.indices], sel.gains, sel.total))
        return out


@register
class InformationGain(GradDot):
    """Single-example information gain under the prior, as an inner-product search.

    ``IG({i}) = -1/2 log(1 - c_i^2)`` with ``c_i = <u_i, phi_*> / |phi_*|`` and the
    variance-corrected training vectors ``u_i = phi_i / sqrt(|phi_i|^2 + delta)`` (``phi``
    the projected loss gradients, ``delta`` the prior precision: ``"auto"`` = the unit-
    information rule ``mean |phi_i|^2 / k``). Signed by ``c_i`` (positive = helpful).
    ``build_index`` + ``top_k(..., index=...)`` turn attribution into a vector search.
    """

    name = "information_gain"

    def __init__(
        self, task: Task, *, projection: Any = 256, prior_precision: float | str = "auto", **kw: Any
    ) -> None:
        super().__init__(task, projection=projection, **kw)
        self.prior_precision = prior_precision
        GaussianPosterior(prior_precision=prior_precision)

    def _fit_preconditioner(self, source: Source):
        total, count, dim = 0.0, 0, 0
        for _, _, T in self.features_.blocks(self.block_size):  # type: ignore[union-attr]
            total += float(T.double().pow(2).sum())
            count, dim = count + len(T), T.shape[1]
        auto = self.prior_precision == "auto"
        self.prior_precision_ = total / (count * dim) if auto else float(self.prior_precision)
        return super()._fit_preconditioner(source)

    def _train_view(self, T: torch.Tensor) -> torch.Tensor:
        return T / (T.pow(2).sum(1, keepdim=True) + self.prior_precision_).sqrt()

    def _query_view(self, Q: torch.Tensor) -> torch.Tensor:
        n = Q.norm(dim=1, keepdim=True)
        return Q / torch.where(n > 0, n, torch.ones_like(n))

    def _score_transform(self, S: torch.Tensor) -> torch.Tensor:
        c = S.clamp(-1 + 1e-12, 1 - 1e-12)
        return torch.sign(c) * (-0.5 * torch.log1p(-c * c))
