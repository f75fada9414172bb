"""Reliability in the report: a badge per attributed example, a summary per method, the SNR
histogram and the mean-versus-spread scatter, with a paragraph on how to read them."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from matplotlib.figure import Figure

from tdakit.reliability.stats import ScoreDistribution
from tdakit.report.plots import new_figure

READING = (
    "An attribution score is computed from one trained model, but training is random: "
    "another initialisation or batch order gives another model and another score. Each "
    "method was therefore re-run on {n} posterior samples ({sampler}), which gives every "
    "(query, training example) pair a mean and a spread. The signal-to-noise ratio (SNR) is "
    "mean / spread. A pair is marked reliable when {test} rejects 'the mean score is zero' "
    "at level {alpha}{correction}: the sign of that explanation does not depend on the luck "
    "of training (as far as these samples show it). 'Not reliable' does not mean wrong, "
    "only that this run's ranking could well have come out differently. The verdict is only "
    "as good as the samples: samplers that barely move the model find almost everything "
    "reliable. In the scatter, points far from the diagonal band (|mean| much larger than "
    "the spread) are the reliable ones."
)
TESTS = {"t": "a one-sample t-test", "z": "the z-on-SNR rule (|mean / sd| against a normal)"}
CORRECTIONS = {
    None: "",
    "bh": " (Benjamini-Hochberg over all pairs)",
    "bonferroni": " (Bonferroni over all pairs)",
}


def reading(dist: ScoreDistribution, sampler: str) -> str:
    """The paragraph under the reliability section, for this distribution's test."""
    return READING.format(
        n=dist.n,
        sampler=sampler,
        test=TESTS[dist.test],
        alpha=dist.alpha,
        correction=CORRECTIONS[dist.correction],
    )


def badge(dist: ScoreDistribution | None, q: int, i: int) -> str:
    """HTML badge for pair ``(q, i)``: reliable or not, with its SNR (empty without a
    distribution)."""
    if dist is None:
        return ""
    snr = float(dist.snr[q, i])
    text = "∞" if not np.isfinite(snr) else f"{snr:+.1f}"
    if bool(dist.reliable[q, i]):
        return (
            f'<span class="badge right" title="reliable: p={float(dist.p_value[q, i]):.2g}">'
            f"reliable {text}</span>"
        )
    return (
        f'<span class="badge muted" title="not reliable: p={float(dist.p_value[q, i]):.2g}">'
        f"SNR {text}</span>"
    )


def summary_rows(dists: Mapping[str, ScoreDistribution]) -> list[list[object]]:
    rows = []
    for name, d in dists.items():
        s = d.summary()
        rows.append(
            [
                name,
                s["samples"],
                s["pairs"],
                round(100 * s["fraction_reliable"], 1),
                round(s["median_abs_snr"], 2),
            ]
        )
    return rows


SUMMARY_HEADER = ["method", "samples", "pairs", "reliable pairs (%)", "median |SNR|"]


def _finite_abs_snr(d: ScoreDistribution) -> np.ndarray:
    snr = d.snr.reshape(-1).abs()
    return snr[torch.isfinite(snr)].numpy()


def snr_histogram_figure(dists: Mapping[str, ScoreDistribution]) -> Figure:
    """Histograms of |SNR| per method on a shared log axis, with the t-test threshold."""
    fig = new_figure(5.6, 2.8)
    ax = fig.add_subplot()
    values = {n: _finite_abs_snr(d) for n, d in dists.items()}
    top = max([float(v.max()) for v in values.values() if v.size] + [1.0])
    bins = np.logspace(-3, np.log10(top * 1.1), 40)
    for name, v in values.items():
        ax.hist(np.clip(v, 1e-3, None), bins=bins, histtype="step", label=name, linewidth=1.2)
    ax.set_xscale("log")
    first = next(iter(dists.values()))
    cut = threshold(first)
    if cut is not None:
        ax.axvline(cut, color="k", linestyle="--", linewidth=0.8)
        ax.text(cut, ax.get_ylim()[1] * 0.9, " reliable →", fontsize=7, va="top")
    ax.set_xlabel("|SNR| = |mean| / sd over posterior samples", fontsize=8)
    ax.set_ylabel("pairs", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, ncol=2)
    return fig


def threshold(dist: ScoreDistribution) -> float | None:
    """The |SNR| above which an uncorrected test rejects (None under a correction)."""
    from scipy import stats

    if dist.correction is not None:
        return None
    q = 1 - dist.alpha / 2
    if dist.test == "z":
        return float(stats.norm.ppf(q))
    return float(stats.t.ppf(q, df=dist.n - 1) / np.sqrt(dist.n))


def mean_sd_figure(dists: Mapping[str, ScoreDistribution]) -> Figure:
    """One panel per method: each pair's mean score against its spread; reliable pairs in
    green."""
    k = len(dists)
    cols = min(k, 4)
    rows = -(-k // cols)
    fig = new_figure(2.4 * cols, 2.2 * rows)
    for j, (name, d) in enumerate(dists.items()):
        ax = fig.add_subplot(rows, cols, j + 1)
        m, s, r = (t.reshape(-1).numpy() for t in (d.mean, d.sd, d.reliable))
        ax.scatter(s[~r], m[~r], s=3, color="#999999", alpha=0.5, linewidths=0)
        ax.scatter(s[r], m[r], s=4, color="#2e8b57", linewidths=0)
        ax.axhline(0, color="k", linewidth=0.5)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("sd", fontsize=7)
        ax.set_ylabel("mean", fontsize=7)
        ax.tick_params(labelsize=6)
    return fig
