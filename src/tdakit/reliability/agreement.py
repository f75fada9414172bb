"""How well an estimated score distribution agrees with the ground truth's, pair by pair:
correlations of the means, standard deviations and SNRs across pairs, per-query rank
correlations, and per-pair distribution distances (Kolmogorov-Smirnov, Wasserstein-1) when
both kept their samples."""

from __future__ import annotations

import torch

from tdakit.errors import require
from tdakit.metrics.functional import pearson_rows, spearman_rows
from tdakit.reliability.stats import ScoreDistribution


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two-sample Kolmogorov-Smirnov statistic per column: ``a [n, ...]``, ``b [m, ...]``."""
    A = a.reshape(len(a), -1).T.double().sort(1).values  # [pairs, n]
    B = b.reshape(len(b), -1).T.double().sort(1).values
    points = torch.cat([A, B], 1)
    Fa = torch.searchsorted(A.contiguous(), points.contiguous(), right=True) / A.shape[1]
    Fb = torch.searchsorted(B.contiguous(), points.contiguous(), right=True) / B.shape[1]
    return (Fa - Fb).abs().max(1).values.reshape(a.shape[1:])


def wasserstein_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Wasserstein-1 distance of the empirical distributions, per column."""
    A = a.reshape(len(a), -1).T.double().sort(1).values
    B = b.reshape(len(b), -1).T.double().sort(1).values
    points = torch.cat([A, B], 1).sort(1).values
    gaps = points[:, 1:] - points[:, :-1]
    Fa = torch.searchsorted(A.contiguous(), points[:, :-1].contiguous(), right=True) / A.shape[1]
    Fb = torch.searchsorted(B.contiguous(), points[:, :-1].contiguous(), right=True) / B.shape[1]
    return ((Fa - Fb).abs() * gaps).sum(1).reshape(a.shape[1:])


def agreement(truth: ScoreDistribution, estimate: ScoreDistribution) -> dict:
    """Pearson and Spearman (across pairs) of ``mean``, ``sd`` and ``snr``; the mean
    per-query Spearman of the means; the reliable flag's precision, recall and F1 against
    the truth; and, with samples kept, per-pair KS and Wasserstein distances."""
    require(
        truth.mean.shape == estimate.mean.shape,
        f"The distributions cover different pairs: {tuple(truth.mean.shape)} vs "
        f"{tuple(estimate.mean.shape)}.",
    )
    out: dict = {}
    for name in ("mean", "sd", "snr"):
        t, e = getattr(truth, name).reshape(-1), getattr(estimate, name).reshape(-1)
        ok = torch.isfinite(t) & torch.isfinite(e)
        out[f"pearson_{name}"] = float(pearson_rows(t[ok][None], e[ok][None])[0])
        out[f"spearman_{name}"] = float(spearman_rows(t[ok][None], e[ok][None])[0])
    out["per_query_spearman_mean"] = spearman_rows(truth.mean, estimate.mean)
    tp = float((truth.reliable & estimate.reliable).sum())
    precision = tp / max(float(estimate.reliable.sum()), 1.0)
    recall = tp / max(float(truth.reliable.sum()), 1.0)
    out.update(
        precision=precision,
        recall=recall,
        f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    )
    if truth.samples is not None and estimate.samples is not None:
        out["ks"] = ks_distance(truth.samples, estimate.samples)
        out["wasserstein"] = wasserstein_distance(truth.samples, estimate.samples)
    return out
