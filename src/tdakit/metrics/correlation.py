"""Correlation metrics against retraining ground truth: LDS, LOO correlation, further training."""

from __future__ import annotations

import torch
from torch import Tensor

from tdakit.errors import require
from tdakit.metrics import _inputs as check
from tdakit.metrics.functional import cosine_rows, pearson_rows, spearman_rows
from tdakit.metrics.stats import CONFIDENCE, N_BOOT, MetricResult, bootstrap_ci, summarise

__all__ = ["further_training_agreement", "lds", "loo_correlation"]


def lds(
    S: Tensor,
    masks: Tensor,
    losses: Tensor,
    *,
    measurement: str = "loss",
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> MetricResult:
    """Linear datamodeling score (METHODS.md §3).

    For each query q, the Spearman correlation over subsets m between the predicted
    effect ``sum_{i in S_m} S[q, i]`` and the subset model's outcome ``-losses[m, q]``
    (outcomes are loss-like: more helpful examples present -> lower loss), averaged over
    queries. Higher is better (1 = perfect ranking of subsets).

    Args:
        S: scores ``[n_query, n_train]``.
        masks: subset membership ``[M, n_train]`` (bool).
        losses: query losses of the subset-trained models ``[M, n_query]``, or
            ``[M, R, n_query]`` for R models per subset (averaged over R first).
        measurement: what ``losses`` measure (recorded in ``details`` for the report).
        seed: bootstrap seed (CI over queries).

    Queries whose outcome (or prediction) is constant over subsets have no defined
    Spearman; they are excluded with a warning and counted in
    ``details["n_excluded_queries"]``.
    """
    S = check.floats(S, "S", 2)
    nq, n = S.shape
    masks = check.mask(masks, "masks", 2, (None, n))
    M = masks.shape[0]
    L = check.tensor(losses, "losses")
    require(
        L.ndim in (2, 3),
        f"losses must be [M, n_query] or [M, R, n_query], got shape {tuple(L.shape)}.",
    )
    R = 1 if L.ndim == 2 else L.shape[1]
    L = check.floats(L, "losses", L.ndim, (M, nq) if L.ndim == 2 else (M, None, nq))
    if L.ndim == 3:
        L = L.mean(1)
    require(M >= 3, f"LDS needs at least 3 subsets to rank (got M={M}); draw more subsets.")
    predicted = S @ masks.double().T  # [nq, M]
    per_query = spearman_rows(predicted, -L.T)
    alpha = float(masks.double().mean())
    details = {"M": M, "R": R, "alpha": alpha, "measurement": measurement, "n_query": nq}
    return summarise(
        "lds", per_query, n_boot=n_boot, confidence=confidence, seed=seed, details=details
    )


def loo_correlation(
    S_subset: Tensor,
    loo: Tensor,
    *,
    indices: Tensor | None = None,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> MetricResult:
    """Pearson correlation per query between scores and leave-one-out effects.

    ``loo[q, j] = m(z_q; θ_{D∖i_j}) − m(z_q; θ_D)`` for K removed examples (same sign as
    the scores: positive = removing it raised the query's loss). ``S_subset`` is
    ``[n_query, K]``; or pass the full ``[n_query, n_train]`` matrix with ``indices``
    ``[K]`` of the removed examples. Value: mean Pearson over queries (higher is better);
    ``details["spearman"]`` (mean) and ``details["spearman_per_query"]``.
    """
    loo = check.floats(loo, "loo", 2)
    nq, K = loo.shape
    S = check.floats(S_subset, "S_subset", 2, (nq, None if indices is not None else K))
    if indices is not None:
        idx = check.labels(indices, "indices", K)
        require(
            bool(((idx >= 0) & (idx < S.shape[1])).all()),
            f"indices must lie in [0, {S.shape[1]}) (the columns of S).",
        )
        S = S[:, idx]
    require(K >= 2, f"A correlation needs at least 2 removed examples per query, got {K}.")
    pearson = pearson_rows(S, loo)
    spearman = spearman_rows(S, loo)
    details = {
        "K": K,
        "spearman": float(spearman.nanmean()),
        "spearman_ci": bootstrap_ci(spearman, n_boot=n_boot, confidence=confidence, seed=seed),
        "spearman_per_query": spearman,
    }
    return summarise(
        "loo_correlation",
        pearson,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
        details=details,
    )


def further_training_agreement(
    S: Tensor,
    gold: Tensor,
    *,
    t: list | Tensor | None = None,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> MetricResult:
    """Agreement with the further-training gold standard (METHODS.md §3), per horizon t.

    Args:
        S: the method's scores on the K left-out examples ``[n_query, K]``.
        gold: further-training attributions ``[T, n_query, K]`` (or ``[n_query, K]`` for
            one horizon), oriented like scores.
        t: labels of the T horizons (steps or epochs), for the report.

    Per query and horizon: cosine similarity and Spearman between ``S[q]`` and
    ``gold[t, q]``. ``details["cosine"]``/``["spearman"]`` are the means over queries per
    horizon ``[T]`` with CIs ``[T, 2]`` (``..._ci``) and per-query values ``[n_query, T]``.
    The headline value is the mean cosine over queries and horizons (per_query = a
    query's cosine averaged over horizons). Higher is better.
    """
    G = check.tensor(gold, "gold")
    if G.ndim == 2:
        G = G.unsqueeze(0)
    G = check.floats(G, "gold", 3)
    T, nq, K = G.shape
    S = check.floats(S, "S", 2, (nq, K))
    labels = list(range(T)) if t is None else [float(v) for v in torch.as_tensor(t).flatten()]
    require(len(labels) == T, f"t has {len(labels)} entries but gold has {T} horizons.")
    cos = cosine_rows(S.unsqueeze(0), G).T  # [nq, T]
    spear = spearman_rows(S.unsqueeze(0).expand_as(G), G).T
    kw = {"n_boot": n_boot, "confidence": confidence, "seed": seed}
    details = {
        "t": labels,
        "K": K,
        "cosine": cos.nanmean(0),
        "cosine_ci": bootstrap_ci(cos, **kw),
        "cosine_per_query": cos,
        "spearman": spear.nanmean(0),
        "spearman_ci": bootstrap_ci(spear, **kw),
        "spearman_per_query": spear,
    }
    return summarise("further_training_cosine", cos.nanmean(1), details=details, **kw)
