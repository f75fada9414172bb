"""Bootstrap confidence intervals, the result object and the paired comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from tdakit import TdakitError, metrics
from tdakit.metrics.stats import summarise


def test_bootstrap_ci_equals_a_loop_over_the_same_resamples():
    v = torch.randn(37, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lo, hi = metrics.bootstrap_ci(v, n_boot=500, confidence=0.9, seed=11)
    idx = metrics.bootstrap_indices(37, 500, seed=11).numpy()
    assert idx.shape == (500, 37) and idx.min() >= 0 and idx.max() < 37
    means = [v.numpy()[row].mean() for row in idx]  # brute force, one resample at a time
    ref_lo, ref_hi = np.percentile(means, [5.0, 95.0])
    assert lo == pytest.approx(ref_lo, abs=1e-12) and hi == pytest.approx(ref_hi, abs=1e-12)


def test_bootstrap_ci_matches_normal_theory_contains_value_and_shrinks():
    gen = torch.Generator().manual_seed(0)
    widths = []
    for n in (25, 2500):
        v = torch.randn(n, generator=gen, dtype=torch.float64) * 2.0 + 1.0
        lo, hi = metrics.bootstrap_ci(v, seed=0)
        assert lo < float(v.mean()) < hi
        half = 1.96 * float(v.std()) / math.sqrt(n)  # normal-theory half width
        assert (hi - lo) / 2 == pytest.approx(half, rel=0.2)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 5  # 100x the queries -> ~10x narrower


def test_bootstrap_ci_seeded_and_nan_excluded():
    v = torch.tensor([0.1, 0.5, float("nan"), 0.9, 0.3], dtype=torch.float64)
    a = metrics.bootstrap_ci(v, seed=5)
    assert a == metrics.bootstrap_ci(v, seed=5)
    assert a != metrics.bootstrap_ci(v, seed=6)
    assert a == metrics.bootstrap_ci(v[~torch.isnan(v)], seed=5)
    assert metrics.bootstrap_ci(torch.tensor([2.0]), seed=0) == (2.0, 2.0)


def test_bootstrap_ci_columns_share_resamples():
    v = torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ci = metrics.bootstrap_ci(v, seed=2)
    assert ci.shape == (3, 2)
    for j in range(3):
        assert tuple(ci[j].tolist()) == pytest.approx(metrics.bootstrap_ci(v[:, j], seed=2))


def test_bootstrap_statistic_strata_keep_group_sizes():
    strata = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    seen = []

    def stat(idx):
        seen.append(idx)
        return strata[idx].double().mean(1)

    ci = metrics.bootstrap_statistic(stat, 10, n_boot=50, seed=0, strata=strata)
    assert torch.allclose(ci, torch.tensor([0.7, 0.7], dtype=torch.float64))
    assert all(bool((strata[i].sum(1) == 7).all()) for i in seen)


def test_bad_bootstrap_arguments():
    v = torch.ones(4)
    with pytest.raises(TdakitError, match="n_boot"):
        metrics.bootstrap_ci(v, n_boot=0)
    with pytest.raises(TdakitError, match="confidence"):
        metrics.bootstrap_ci(v, confidence=1.5)


def test_result_object_fields_and_nan_units_warn():
    v = torch.tensor([1.0, float("nan"), 3.0], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="1 of 3"):
        r = summarise("demo", v, seed=0)
    assert r.value == 2.0 and r.n == 2 and r.details["n_excluded_queries"] == 1
    assert torch.isnan(r.per_query[1]) and r.ci[0] <= r.value <= r.ci[1]
    assert "demo = 2.0000" in str(r)
    assert r.to_dict()["per_query"][0] == 1.0
    with pytest.raises(AttributeError):
        r.value = 3.0  # frozen


def _result(values, name="m"):
    return summarise(name, torch.as_tensor(values, dtype=torch.float64), seed=0)


def test_compare_hand_computed_wilcoxon():
    # differences 1..5 all positive: exact two-sided Wilcoxon p = 2 * (1/2^5) = 0.0625
    a = _result([2.0, 4.0, 6.0, 8.0, 10.0])
    b = _result([1.0, 2.0, 3.0, 4.0, 5.0])
    c = metrics.compare(a, b, seed=0)
    assert c.difference == pytest.approx(3.0)
    assert c.p_value == pytest.approx(0.0625)
    assert c.ci[0] <= 3.0 <= c.ci[1] and c.n == 5
    t = metrics.compare(a, b, test="t", seed=0)  # t on d = 1..5: mean 3, sd sqrt(2.5)
    tstat = 3.0 / (math.sqrt(2.5) / math.sqrt(5))
    assert t.p_value == pytest.approx(2 * sps.t.sf(tstat, df=4))


def test_compare_drops_nan_pairs_and_identical_gives_p_one():
    a = _result([1.0, 2.0, 3.0, 4.0])
    assert metrics.compare(a, a).p_value == 1.0 and metrics.compare(a, a).ci == (0.0, 0.0)
    with pytest.warns(RuntimeWarning):
        b = _result([0.0, float("nan"), 1.0, 2.0])
    c = metrics.compare(a, b)
    assert c.n == 3 and c.difference == pytest.approx((1 + 2 + 2) / 3)


def test_compare_errors():
    a, b = _result([1.0, 2.0]), _result([1.0, 2.0, 3.0])
    with pytest.raises(TdakitError, match="different units"):
        metrics.compare(a, b)
    with pytest.raises(TdakitError, match="test"):
        metrics.compare(a, a, test="sign")
    no_units = metrics.MetricResult("x", 1.0, (1.0, 1.0), None, 1)
    with pytest.raises(TdakitError, match="per_query"):
        metrics.compare(no_units, no_units)
