"""Row-wise rank statistics in torch: ranks with ties, Pearson, Spearman, cosine, AUROC, AP.

All functions work on the last dimension and broadcast over leading ones, so a whole
bootstrap (``[n_boot, n]``) or all queries (``[n_query, n]``) are handled in one call.
Undefined values (a constant row for a correlation, no positives for AP) are NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "auroc_rows",
    "average_precision_rows",
    "cosine_rows",
    "pearson_rows",
    "rankdata",
    "spearman_rows",
]


def _tie_bounds(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For each entry: #entries strictly below it and #entries <= it (same row), + sort order."""
    xs, order = torch.sort(x, dim=-1)
    flat_s = xs.reshape(-1, xs.shape[-1]).contiguous()
    flat_x = x.reshape(-1, x.shape[-1]).contiguous()
    below = torch.searchsorted(flat_s, flat_x, right=False).reshape(x.shape)
    upto = torch.searchsorted(flat_s, flat_x, right=True).reshape(x.shape)
    return below, upto, order


def rankdata(x: Tensor) -> Tensor:
    """1-based ranks along the last dimension, tied entries get their average rank."""
    below, upto, _ = _tie_bounds(x)
    return (below + upto + 1).to(torch.float64) / 2.0


def _centred(x: Tensor) -> tuple[Tensor, Tensor]:
    """Deviations from the row mean, and whether the row is constant up to rounding."""
    x = x.double()
    dev = x - x.mean(-1, keepdim=True)
    tol = 1e-12 * x.abs().amax(-1) * x.shape[-1] ** 0.5
    return dev, dev.norm(dim=-1) <= tol


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` along the last dimension (NaN if constant)."""
    (a, const_a), (b, const_b) = _centred(a), _centred(b)
    constant = const_a | const_b
    den = torch.where(constant, 1.0, a.norm(dim=-1) * b.norm(dim=-1))
    r = ((a * b).sum(-1) / den).clamp(-1.0, 1.0)
    return torch.where(constant, float("nan"), r)


def spearman_rows(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation along the last dimension (average ranks for ties)."""
    return pearson_rows(rankdata(a), rankdata(b))


def cosine_rows(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity along the last dimension (NaN if either vector is zero)."""
    a, b = a.double(), b.double()
    den = a.norm(dim=-1) * b.norm(dim=-1)
    zero = den == 0
    c = (a * b).sum(-1) / torch.where(zero, torch.ones_like(den), den)
    return torch.where(zero, torch.full_like(c, float("nan")), c.clamp(-1.0, 1.0))


def auroc_rows(scores: Tensor, labels: Tensor) -> Tensor:
    """Area under the ROC curve per row (Mann–Whitney form; ties count one half).

    ``labels`` are booleans; a row without positives or without negatives gives NaN.
    """
    pos = labels.to(torch.float64)
    n_pos = pos.sum(-1)
    n_neg = labels.shape[-1] - n_pos
    ranks = rankdata(scores)
    u = (ranks * pos).sum(-1) - n_pos * (n_pos + 1) / 2.0
    den = n_pos * n_neg
    out = u / torch.where(den == 0, torch.ones_like(den), den)
    return torch.where(den == 0, torch.full_like(out, float("nan")), out)


def average_precision_rows(scores: Tensor, labels: Tensor) -> Tensor:
    """Average precision per row, ranking by decreasing score (AUPRC, step-wise).

    AP = (1/P) * sum over positives i of precision at the threshold ``scores[i]``:
    (#positives scoring >= s_i) / (#examples scoring >= s_i). With ties this equals
    the threshold-wise sum of (recall step) x precision. No positives gives NaN.
    """
    pos = labels.to(torch.float64)
    n = scores.shape[-1]
    below, _, order = _tie_bounds(scores)
    # positives among the entries strictly below each entry, via a cumulative sum in sort order
    cum = torch.cat([torch.zeros_like(pos[..., :1]), pos.gather(-1, order).cumsum(-1)], dim=-1)
    n_pos = pos.sum(-1, keepdim=True)
    tp_at_or_above = n_pos - cum.gather(-1, below)
    count_at_or_above = (n - below).to(torch.float64)
    ap = (pos * tp_at_or_above / count_at_or_above).sum(-1) / n_pos.squeeze(-1)
    return torch.where(n_pos.squeeze(-1) == 0, torch.full_like(ap, float("nan")), ap)


def auroc_ap_from_codes(codes: Tensor, labels: Tensor, n_values: int) -> tuple[Tensor, Tensor]:
    """AUROC and AP per row when the scores are given as dense value codes.

    ``codes[b, j]`` in ``[0, n_values)`` is the rank of example j's score among the
    distinct scores (equal scores share a code), e.g. the rows of a bootstrap resample of
    one score vector. Counting per code replaces sorting: O(rows * (n + n_values)).
    """
    pos = labels.to(torch.float64)
    rows = codes.shape[0]
    count = torch.zeros(rows, n_values, dtype=torch.float64).scatter_add_(
        1, codes, torch.ones_like(pos)
    )
    pos_count = torch.zeros(rows, n_values, dtype=torch.float64).scatter_add_(1, codes, pos)
    below = count.cumsum(1) - count
    pos_below = pos_count.cumsum(1) - pos_count
    n, P = codes.shape[1], pos.sum(1)
    u = (pos_count * (below + (count + 1) / 2)).sum(1) - P * (P + 1) / 2
    den = P * (n - P)
    auroc = torch.where(den == 0, float("nan"), u / torch.where(den == 0, 1.0, den))
    above = torch.where(count > 0, n - below, 1.0)
    ap = (pos_count * (P.unsqueeze(1) - pos_below) / above).sum(1) / P
    return auroc, torch.where(P == 0, float("nan"), ap)
