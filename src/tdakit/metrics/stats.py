"""The metric result object, percentile-bootstrap confidence intervals and paired comparison.

Every metric returns a :class:`MetricResult`. Its ``ci`` is a percentile bootstrap over
the metric's units (queries unless the metric says otherwise): draw ``n_boot`` resamples
of the units with replacement, recompute the statistic on each, take the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles. Resampling is vectorised:
one ``[n_boot, n]`` index matrix per chunk, never a Python loop over resamples.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tdakit.errors import require

__all__ = [
    "Comparison",
    "MetricResult",
    "bootstrap_ci",
    "bootstrap_indices",
    "bootstrap_statistic",
    "compare",
]

N_BOOT = 1000
CONFIDENCE = 0.95
_CHUNK_ELEMENTS = 4_000_000  # index entries per resampling chunk (bounds memory)


@dataclass(frozen=True, eq=False)
class MetricResult:
    """One metric's value with a bootstrap confidence interval.

    Attributes:
        name: the metric's name.
        value: the point estimate (usually the mean over queries, NaN units excluded).
        ci: ``(low, high)`` percentile-bootstrap interval.
        per_query: the per-unit values ``[n_units]`` the mean is taken over (NaN where a
            unit was excluded), or ``None`` when the metric is not a mean over units.
        n: the number of units that entered ``value``.
        details: further numbers (secondary statistics, curves, counts, settings).
        higher_is_better: the metric's direction.
    """

    name: str
    value: float
    ci: tuple[float, float]
    per_query: Tensor | None
    n: int
    details: dict = field(default_factory=dict)
    higher_is_better: bool = True

    def __str__(self) -> str:
        arrow = "higher" if self.higher_is_better else "lower"
        lo, hi = self.ci
        return (
            f"{self.name} = {self.value:.4f} [{lo:.4f}, {hi:.4f}] (n={self.n}, {arrow} is better)"
        )

    def to_dict(self) -> dict:
        """A JSON-friendly summary (tensors become lists)."""

        def plain(v: object) -> object:
            if isinstance(v, Tensor):
                return v.tolist()
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if isinstance(v, (MetricResult, Comparison)):
                return v.to_dict()
            return v

        return {
            "name": self.name,
            "value": self.value,
            "ci": list(self.ci),
            "n": self.n,
            "higher_is_better": self.higher_is_better,
            "per_query": plain(self.per_query),
            "details": plain(self.details),
        }


@dataclass(frozen=True, eq=False)
class Comparison:
    """Paired comparison of two results over the same units: ``a - b``."""

    name: str
    difference: float
    ci: tuple[float, float]
    p_value: float
    test: str
    n: int
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-friendly summary."""
        return {
            "name": self.name,
            "difference": self.difference,
            "ci": list(self.ci),
            "p_value": self.p_value,
            "test": self.test,
            "n": self.n,
            "details": self.details,
        }

    def __str__(self) -> str:
        lo, hi = self.ci
        return (
            f"{self.name}: difference {self.difference:+.4f} [{lo:+.4f}, {hi:+.4f}], "
            f"p = {self.p_value:.3g} ({self.test}, n={self.n})"
        )


def _check_boot(n_boot: int, confidence: float) -> None:
    require(
        isinstance(n_boot, int) and not isinstance(n_boot, bool) and n_boot >= 1,
        f"n_boot must be a positive int, got {n_boot!r}.",
    )
    require(
        isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0,
        f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence!r}.",
    )


def bootstrap_indices(n: int, n_boot: int = N_BOOT, seed: int = 0) -> Tensor:
    """The resample indices ``[n_boot, n]`` that :func:`bootstrap_statistic` uses (CPU)."""
    return torch.cat(list(_index_chunks(n, n_boot, seed, None)))


def _index_chunks(n: int, n_boot: int, seed: int, strata: Tensor | None):
    gen = torch.Generator().manual_seed(int(seed))
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    groups = (
        None
        if strata is None
        else [torch.nonzero(strata == s).flatten() for s in torch.unique(strata)]
    )
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        if groups is None:
            yield torch.randint(n, (b, n), generator=gen)
        else:  # resample within each stratum, keeping the strata sizes
            yield torch.cat(
                [g[torch.randint(len(g), (b, len(g)), generator=gen)] for g in groups], dim=1
            )


def bootstrap_statistic(
    statistic: Callable[[Tensor], Tensor],
    n: int,
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    strata: Tensor | None = None,
    centre: float | Tensor | None = None,
) -> Tensor:
    """Percentile bootstrap interval of ``statistic`` over ``n`` resampled units.

    ``statistic(idx)`` receives resample indices ``[b, n]`` and returns ``[b]`` or
    ``[b, T]`` values (NaN resamples are ignored). ``strata`` (``[n]`` labels) resamples
    within each stratum. ``centre``: if given, the interval is shifted by the bootstrap
    bias ``centre - mean(resampled)`` (for statistics that are not means). Returns
    ``[2]`` or ``[2, T]`` (low, high).
    """
    _check_boot(n_boot, confidence)
    require(n >= 1, "The bootstrap needs at least one unit; the metric got none.")
    values = torch.cat(
        [statistic(idx) for idx in _index_chunks(n, n_boot, seed, strata)], dim=0
    ).double()
    alpha = (1.0 - confidence) / 2.0
    qs = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64, device=values.device)
    out = torch.nanquantile(values, qs, dim=0)
    if centre is not None:
        out = out + (torch.as_tensor(centre, dtype=out.dtype) - values.nanmean(0))
    return out.cpu()


def bootstrap_ci(
    values: Tensor, *, n_boot: int = N_BOOT, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float] | Tensor:
    """Percentile-bootstrap interval of the mean of ``values`` (``[n]`` or ``[n, T]``).

    NaN entries are excluded (per column) before resampling. ``[n]`` gives a
    ``(low, high)`` tuple, ``[n, T]`` a ``[T, 2]`` tensor. A single value gives ``(v, v)``.
    """
    v = torch.as_tensor(values).detach().double().cpu()
    require(v.ndim in (1, 2), f"bootstrap_ci needs values [n] or [n, T], got {tuple(v.shape)}.")
    if v.ndim == 1:
        v = v[~torch.isnan(v)]
        if len(v) == 0:
            return (math.nan, math.nan)
        lo, hi = bootstrap_statistic(
            lambda idx: v[idx].mean(1), len(v), n_boot=n_boot, confidence=confidence, seed=seed
        ).tolist()
        return (lo, hi)
    require(v.shape[0] >= 1, "bootstrap_ci got no values.")
    return bootstrap_statistic(
        lambda idx: v[idx].nanmean(1), v.shape[0], n_boot=n_boot, confidence=confidence, seed=seed
    ).T.contiguous()


def summarise(
    name: str,
    per_query: Tensor,
    *,
    what: str = "queries",
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    higher_is_better: bool = True,
    details: dict | None = None,
) -> MetricResult:
    """Mean over units with NaN units excluded (with a warning and a count), plus its CI."""
    per_query = per_query.detach().double().cpu()
    nan = torch.isnan(per_query)
    n_nan = int(nan.sum())
    details = dict(details or {})
    details[f"n_excluded_{what}"] = n_nan
    if n_nan:
        warnings.warn(
            f"{name}: {n_nan} of {len(per_query)} {what} have an undefined value (constant "
            "scores or outcomes) and were excluded from the mean; see "
            f"details['n_excluded_{what}'].",
            RuntimeWarning,
            stacklevel=3,
        )
    valid = per_query[~nan]
    value = float(valid.mean()) if len(valid) else math.nan
    ci = bootstrap_ci(valid, n_boot=n_boot, confidence=confidence, seed=seed)
    details.update(n_boot=n_boot, confidence=confidence, seed=seed)
    return MetricResult(name, value, ci, per_query, len(valid), details, higher_is_better)


def compare(
    result_a: MetricResult,
    result_b: MetricResult,
    *,
    test: str = "wilcoxon",
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Comparison:
    """Paired comparison of two methods on the same units (``a - b``).

    Units where either result is NaN are dropped. The difference of means gets a
    percentile-bootstrap CI over the paired units; the p-value is two-sided, from the
    Wilcoxon signed-rank test (``test="wilcoxon"``, default; zero differences dropped)
    or the paired Student t test (``test="t"``). Identical results give p = 1.
    """
    from scipy import stats as sps

    require(test in ("wilcoxon", "t"), f"test must be 'wilcoxon' or 't', got {test!r}.")
    for r, which in ((result_a, "result_a"), (result_b, "result_b")):
        require(
            isinstance(r, MetricResult) and r.per_query is not None,
            f"{which} must be a MetricResult with per-unit values (per_query); this metric "
            "is not a mean over units and cannot be compared pairwise.",
        )
    a, b = result_a.per_query.double(), result_b.per_query.double()  # type: ignore[union-attr]
    require(
        a.shape == b.shape,
        f"The results cover different units ({tuple(a.shape)} vs {tuple(b.shape)}); compute "
        "both metrics on the same queries in the same order.",
    )
    if result_a.name != result_b.name:
        warnings.warn(
            f"Comparing different metrics ({result_a.name!r} vs {result_b.name!r}).",
            RuntimeWarning,
            stacklevel=2,
        )
    keep = ~(torch.isnan(a) | torch.isnan(b))
    d = (a - b)[keep]
    require(len(d) >= 1, "No unit has a defined value in both results; nothing to compare.")
    ci = bootstrap_ci(d, n_boot=n_boot, confidence=confidence, seed=seed)
    dn = d.numpy()
    if not d.abs().gt(0).any() or len(d) < 2:
        p = 1.0
    elif test == "wilcoxon":
        p = float(sps.wilcoxon(dn, zero_method="wilcox", alternative="two-sided").pvalue)
    else:
        p = float(sps.ttest_1samp(dn, 0.0).pvalue) if dn.std() > 0 else 0.0
    name = f"{result_a.name}: a - b"
    details = {"a": result_a.value, "b": result_b.value, "n_dropped": int((~keep).sum())}
    test_name = "Wilcoxon signed-rank" if test == "wilcoxon" else "paired t"
    return Comparison(name, float(d.mean()), ci, p, test_name, len(d), details)
