"""How much attribution methods agree: mean per-query Spearman rank correlation."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from tdakit.errors import require
from tdakit.metrics.functional import pearson_rows, rankdata

__all__ = ["agreement_matrix"]


def agreement_matrix(scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``A[a, b]`` = mean over queries of the Spearman correlation of rows ``S_a[q]``, ``S_b[q]``.

    ``scores`` maps method names to score matrices of one common shape ``[n_query, n_train]``.
    Queries where a row is constant (correlation undefined) are left out of the mean; a pair
    with no defined correlation at all is NaN. Returns float64 ``[m, m]`` in dict order.
    """
    names = list(scores)
    require(len(names) > 0, "agreement_matrix needs at least one score matrix.")
    mats = [torch.as_tensor(scores[n]).detach().to("cpu", torch.float64) for n in names]
    shape = mats[0].shape
    for name, S in zip(names, mats, strict=True):
        require(
            S.ndim == 2 and S.shape == shape,
            f"Score matrix of {name!r} has shape {tuple(S.shape)} but {names[0]!r} has "
            f"{tuple(shape)}; all methods must score the same queries against the same "
            "training set ([n_query, n_train]).",
        )
    require(shape[1] >= 2, "Rank correlation needs at least two training examples per row.")
    ranks = [rankdata(S) for S in mats]  # Spearman = Pearson of the ranks; rank each once
    out = torch.empty(len(names), len(names), dtype=torch.float64)
    for a in range(len(names)):
        for b in range(a, len(names)):
            out[a, b] = out[b, a] = pearson_rows(ranks[a], ranks[b]).nanmean()
    return out
