"""Detection and retrieval metrics: mislabels, backdoors/shortcuts, planted causes, classes.

Ranking direction everywhere: a larger score ranks first. For mislabel detection the
score is the self-influence ``S[i, i]`` (larger = more suspicious: a mislabelled example
is hard to fit, has a large gradient and hence a large self-influence); for retrieval
the score is ``S[q, i]`` (larger = helped the query more).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tdakit.errors import require
from tdakit.metrics import _inputs as check
from tdakit.metrics.functional import auroc_ap_from_codes, auroc_rows, average_precision_rows
from tdakit.metrics.stats import (
    CONFIDENCE,
    N_BOOT,
    MetricResult,
    bootstrap_ci,
    bootstrap_statistic,
    summarise,
)
from tdakit.scoring import row_blocks as train_blocks

_ROW_ELEMENTS = 8_000_000  # score entries ranked at once

__all__ = [
    "backdoor_detection",
    "class_detection",
    "mislabel_detection",
    "mrr",
    "recall_at_k",
    "subclass_detection",
    "topk_cardinality",
]


def mislabel_detection(
    self_scores: Tensor,
    flipped: Tensor,
    *,
    fractions: tuple[float, ...] = (0.05, 0.1, 0.2),
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> MetricResult:
    """Find flipped labels by inspecting training examples in order of decreasing self-influence.

    Value: area under the detection curve (fraction of flipped examples found vs fraction
    of the data inspected, piecewise linear, ties inspected in random order on average);
    random ranking gives 0.5, perfect ``1 - P/(2N)``. Identity used: area =
    ``P/(2N) + (1 - P/N) * AUROC``. ``details``: ``auroc``, ``auprc`` (average precision),
    their CIs, ``found_at`` (fraction found after inspecting each of ``fractions``) and the
    ``curve`` ``[N+1, 2]``. CIs: stratified bootstrap over training examples (flipped and
    clean resampled separately). Higher is better.
    """
    s = check.floats(self_scores, "self_scores", 1)
    n = len(s)
    flipped = check.mask(flipped, "flipped", 1, (n,))
    P = int(flipped.sum())
    require(
        0 < P < n,
        f"flipped must mark at least one but not all training examples (got {P} of {n}).",
    )
    bad = [
        f
        for f in fractions
        if not (isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f <= 1)
    ]
    require(
        not bad,
        f"fractions are shares of the training set to inspect and must lie in [0, 1]; got "
        f"{bad}. Use e.g. fractions=(0.05, 0.1, 0.2).",
    )

    values, codes = torch.unique(s, return_inverse=True)

    def stats(idx: Tensor) -> Tensor:
        auroc, ap = auroc_ap_from_codes(codes[idx], flipped[idx], len(values))
        return torch.stack([P / (2 * n) + (1 - P / n) * auroc, auroc, ap], dim=-1)

    point = stats(torch.arange(n).unsqueeze(0))[0]
    ci = bootstrap_statistic(
        stats, n, n_boot=n_boot, confidence=confidence, seed=seed, strata=flipped.long()
    ).T.tolist()
    curve = detection_curve(s, flipped)
    found_at = {f: float(_interp(curve, f)) for f in fractions}
    details = {
        "auroc": float(point[1]),
        "auroc_ci": tuple(ci[1]),
        "auprc": float(point[2]),
        "auprc_ci": tuple(ci[2]),
        "found_at": found_at,
        "curve": curve,
        "n_flipped": P,
        "ci_method": "stratified percentile bootstrap over training examples",
        "n_boot": n_boot,
        "confidence": confidence,
        "seed": seed,
    }
    return MetricResult("mislabel_detection", float(point[0]), tuple(ci[0]), None, n, details)


def detection_curve(scores: Tensor, positives: Tensor) -> Tensor:
    """``[N+1, 2]`` points (fraction inspected, fraction of positives found), by decreasing
    score; tied examples are spread evenly (the expected curve under random tie order)."""
    s, pos = scores.double(), positives.double()
    n, P = len(s), float(pos.sum())
    order = torch.argsort(s, descending=True, stable=True)
    s_sorted, found = s[order], pos[order].cumsum(0)
    # replace cumulative counts inside each tie group by linear interpolation
    _, counts = torch.unique_consecutive(s_sorted, return_counts=True)
    ends = counts.cumsum(0)
    starts = ends - counts
    group_found = found[ends - 1]
    before = torch.cat([torch.zeros(1, dtype=found.dtype), group_found[:-1]])
    pos_in_group = torch.arange(n) - starts.repeat_interleave(counts) + 1
    frac = pos_in_group / counts.repeat_interleave(counts)
    found = before.repeat_interleave(counts) + frac * (group_found - before).repeat_interleave(
        counts
    )
    x = torch.arange(n + 1, dtype=torch.float64) / n
    y = torch.cat([torch.zeros(1, dtype=torch.float64), found / P])
    return torch.stack([x, y], dim=1)


def _interp(curve: Tensor, x: float) -> float:
    xs, ys = curve[:, 0].contiguous(), curve[:, 1]
    j = int(torch.searchsorted(xs, torch.tensor([float(x)], dtype=xs.dtype)).clamp(1, len(xs) - 1))
    w = (x - xs[j - 1]) / (xs[j] - xs[j - 1])
    return float(ys[j - 1] + w * (ys[j] - ys[j - 1]))


def _relevance(rel: object, nq: int, n: int, name: str) -> Tensor:
    r = check.tensor(rel, name)
    if r.ndim == 1:
        r = check.mask(r, name, 1, (n,)).unsqueeze(0).expand(nq, n)
    else:
        r = check.mask(r, name, 2, (nq, n))
    require(bool(r.any(1).all()), f"{name} marks no relevant example for some query.")
    return r


def backdoor_detection(
    S: Tensor,
    triggered: Tensor,
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> MetricResult:
    """Per-query AUPRC of the scores against the triggered (planted) training examples.

    ``S`` ``[n_query, n_train]`` (usually triggered test queries); ``triggered`` ``[n_train]``
    bool, or ``[n_query, n_train]`` for per-query planted causes. Value: mean average
    precision over queries (random ≈ fraction triggered, perfect 1); ``details["auroc"]``
    likewise. Higher is better.
    """
    S = check.floats(S, "S", 2)
    nq, n = S.shape
    rel = _relevance(triggered, nq, n, "triggered")
    ap, auroc = torch.empty(nq, dtype=torch.float64), torch.empty(nq, dtype=torch.float64)
    for a, b in train_blocks(nq, max(1, _ROW_ELEMENTS // n)):  # bounded memory
        ap[a:b], auroc[a:b] = average_precision_rows(S[a:b], rel[a:b]), auroc_rows(S[a:b], rel[a:b])
    kw = {"n_boot": n_boot, "confidence": confidence, "seed": seed}
    details = {
        "auroc": float(auroc.nanmean()),
        "auroc_ci": bootstrap_ci(auroc, **kw),
        "auroc_per_query": auroc,
        "base_rate": float(rel.double().mean()),
    }
    return summarise("backdoor_auprc", ap, details=details, **kw)


def recall_at_k(
    S_or_idx: Tensor,
    relevant: Tensor,
    k: int = 10,
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> MetricResult:
    """Recall@k of planted causes: ``|top-k(q) ∩ R_q| / |R_q|``, mean over queries.

    ``S_or_idx``: scores ``[n_query, n_train]`` or ranked indices ``[n_query, >=k]``;
    ``relevant``: ``[n_train]`` or ``[n_query, n_train]`` bool. ``details["precision"]`` is
    ``|top-k ∩ R| / k``. Higher is better.
    """
    rel, top = _retrieval_inputs(S_or_idx, relevant, k)
    hits = rel.gather(1, top).double().sum(1)
    kw = {"n_boot": n_boot, "confidence": confidence, "seed": seed}
    precision = hits / top.shape[1]
    details = {
        "k": top.shape[1],
        "precision": float(precision.mean()),
        "precision_ci": bootstrap_ci(precision, **kw),
    }
    return summarise(f"recall@{top.shape[1]}", hits / rel.double().sum(1), details=details, **kw)


def _retrieval_inputs(S_or_idx: Tensor, relevant: Tensor, k: int | None) -> tuple[Tensor, Tensor]:
    t = check.tensor(S_or_idx, "S_or_idx")
    require(t.ndim == 2, f"S_or_idx must be 2-D [n_query, ...], got shape {tuple(t.shape)}.")
    rel_t = check.tensor(relevant, "relevant")
    n = rel_t.shape[-1] if rel_t.ndim >= 1 else 0
    require(
        not t.is_floating_point() or t.shape[1] == n,
        f"S has {t.shape[1]} training columns but relevant has {n} entries.",
    )
    rel = _relevance(rel_t, t.shape[0], n, "relevant")
    top = check.ranked(t, t.shape[1] if k is None else k, n, "S_or_idx")
    return rel, top


def mrr(
    S_or_idx: Tensor,
    relevant: Tensor,
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> MetricResult:
    """Mean reciprocal rank of the first planted cause per query.

    From scores: rank = 1 + #(non-relevant examples scoring >= the best relevant one),
    so ties count against the method. From ranked indices ``[n_query, k]``: the position
    of the first relevant index, 0 if none is in the list (MRR@k). Higher is better.
    """
    t = check.tensor(S_or_idx, "S_or_idx")
    if t.is_floating_point():
        S = check.floats(t, "S_or_idx", 2)
        rel = _relevance(relevant, *S.shape, "relevant")
        best = torch.where(rel, S, float("-inf")).amax(1, keepdim=True)
        rank = 1 + ((best <= S) & ~rel).sum(1)
        rr = 1.0 / rank.double()
    else:
        rel, top = _retrieval_inputs(t, relevant, None)
        hit = rel.gather(1, top)
        first = torch.where(hit.any(1), hit.double().argmax(1) + 1.0, torch.inf)
        rr = 1.0 / first
    return summarise("mrr", rr, n_boot=n_boot, confidence=confidence, seed=seed)


def class_detection(
    S_or_idx: Tensor,
    train_labels: Tensor,
    query_labels: Tensor,
    s: int = 10,
    *,
    name: str = "class_detection",
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> MetricResult:
    """Fraction of each query's top-``s`` proponents that share its label; mean over queries.

    ``S_or_idx``: scores ``[n_query, n_train]`` or ranked indices ``[n_query, >=s]``.
    Higher is better.
    """
    train_labels = check.labels(train_labels, "train_labels")
    t = check.tensor(S_or_idx, "S_or_idx")
    require(t.ndim == 2, f"S_or_idx must be 2-D [n_query, ...], got shape {tuple(t.shape)}.")
    query_labels = check.labels(query_labels, "query_labels", t.shape[0])
    top = check.ranked(t, s, len(train_labels), "S_or_idx")
    frac = (train_labels[top] == query_labels.unsqueeze(1)).double().mean(1)
    return summarise(
        name, frac, n_boot=n_boot, confidence=confidence, seed=seed, details={"s": top.shape[1]}
    )


def subclass_detection(
    S_or_idx: Tensor,
    train_subclass: Tensor,
    query_subclass: Tensor,
    s: int = 10,
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> MetricResult:
    """For a model trained on merged super-classes: fraction of the top-``s`` proponents from
    the query's original subclass (see ``tdakit.data.transforms.group_classes``)."""
    return class_detection(
        S_or_idx,
        train_subclass,
        query_subclass,
        s,
        name="subclass_detection",
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
    )


def topk_cardinality(
    S_or_idx: Tensor,
    k: int = 10,
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> MetricResult:
    """``|∪_q top-k(q)| / (n_query · k)``: how query-specific the explanations are.

    1 = every query gets its own examples; ``1/n_query`` = the same k for all. Higher is
    better. Not a mean over queries, so the CI is a bias-corrected percentile bootstrap
    over queries (resampling repeats queries, which shrinks the union; the interval is
    shifted by the bootstrap bias estimate).
    """
    top = check.ranked(S_or_idx, k, None, "S_or_idx")
    require(bool((top >= 0).all()), "S_or_idx holds negative indices.")
    nq, k = top.shape

    def card(idx: Tensor) -> Tensor:  # distinct entries per resample, via a row-wise sort
        chosen = torch.sort(top[idx].reshape(len(idx), -1), dim=1).values
        distinct = 1 + (chosen[:, 1:] != chosen[:, :-1]).sum(1)
        return distinct.double() / (nq * k)

    value = float(card(torch.arange(nq).unsqueeze(0))[0])
    lo, hi = bootstrap_statistic(
        card, nq, n_boot=n_boot, confidence=confidence, seed=seed, centre=value
    ).tolist()
    details = {
        "k": k,
        "n_unique": round(value * nq * k),
        "ci_method": "bias-corrected bootstrap",
        "n_boot": n_boot,
        "confidence": confidence,
        "seed": seed,
    }
    return MetricResult("topk_cardinality", value, (lo, hi), None, nq, details)
