"""The HTML page of a finished suite: metric bars with intervals, time versus quality, the
reliability summary and a gallery of explanations."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from tdakit.report.html import Report
from tdakit.report.plots import new_figure

if TYPE_CHECKING:
    from tdakit.suites.runner import SuiteResult


def metric_bars_figure(rows: list[dict], metric: str) -> Figure:
    """One horizontal bar per method with its 95 % interval."""
    mine = [r for r in rows if r["metric"] == metric]
    fig = new_figure(5.0, 0.35 * len(mine) + 0.9)
    ax = fig.add_subplot()
    y = np.arange(len(mine))
    values = np.array([r["value"] for r in mine])
    ax.barh(y, values, color="#4c72b0", alpha=0.8)
    lo = np.array([r["ci_low"] if r["ci_low"] is not None else r["value"] for r in mine])
    hi = np.array([r["ci_high"] if r["ci_high"] is not None else r["value"] for r in mine])
    ax.errorbar(values, y, xerr=[values - lo, hi - values], fmt="none", ecolor="k", capsize=3)
    ax.set_yticks(y, [r["method"] for r in mine], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(metric, fontsize=8)
    ax.tick_params(labelsize=7)
    return fig


def time_quality_figure(rows: list[dict], metric: str) -> Figure:
    """Seconds (log) against the metric, one point per method."""
    mine = [r for r in rows if r["metric"] == metric]
    fig = new_figure(4.6, 3.0)
    ax = fig.add_subplot()
    for r in mine:
        ax.scatter(max(r["seconds"], 1e-3), r["value"], s=18)
        ax.annotate(
            r["method"],
            (max(r["seconds"], 1e-3), r["value"]),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("time: fit + scores (s)", fontsize=8)
    ax.set_ylabel(metric, fontsize=8)
    ax.tick_params(labelsize=7)
    return fig


def build_suite_report(result: SuiteResult) -> Report:
    """Compose the report of ``result``."""
    suite, rows, data = result.suite, result.rows, result.data
    report = Report(
        f"tdakit suite: {suite.name}",
        f"{len(result.outcomes)} methods, {len(set(r['metric'] for r in rows))} "
        f"metrics; ran in {result.seconds:.1f} s",
    )
    report.add_section("Setup")
    if suite.description:
        report.add_text(suite.description)
    report.add_table(
        ["setting", "value"],
        [
            ["dataset", suite.data],
            ["controlled setup", suite.transform],
            ["model", suite.model],
            ["training", suite.training],
            ["training examples", len(data.X)],
            ["validation / test queries", f"{len(data.Xv)} / {len(data.Xq)}"],
        ],
    )
    report.add_section("Results")
    report.add_text(
        "Point estimates with 95 % bootstrap intervals; every metric here is "
        "higher-is-better. Tuned hyperparameters were chosen on the validation "
        "queries."
    )
    report.add_table(
        ["method", "metric", "value", "95 % interval", "time (s)", "peak memory (MiB)", "tuned"],
        [
            [
                r["method"],
                r["metric"],
                r["value"],
                "–" if r["ci_low"] is None else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                r["seconds"],
                r["peak_mib"],
                r["chosen"] or "–",
            ]
            for r in rows
        ],
    )
    for metric in dict.fromkeys(r["metric"] for r in rows):
        report.add_figure(metric_bars_figure(rows, metric), caption=f"{metric} per method.")
        report.add_figure(
            time_quality_figure(rows, metric),
            caption=f"Time versus {metric}: up and to the left is better.",
        )
    reliable = [o for o in result.outcomes if o.reliable is not None]
    if reliable:
        report.add_section("Reliability")
        report.add_text(
            "Share of (query, training example) pairs whose score keeps its sign "
            "over posterior samples (further training of the final model), by a "
            "one-sample t-test at level 0.05. Higher means the method's "
            "explanations depend less on the luck of training."
        )
        report.add_table(
            ["method", "reliable pairs (%)"],
            [[o.label, round(100 * o.reliable, 1)] for o in reliable],
        )
    if data.classes is not None or data.image_shape is not None:
        n = min(3, len(data.Xq))
        report.add_explanations(
            (data.Xq[:n], data.yq[:n]),
            (data.X, data.y),
            {o.label: o.S_test[:n] for o in result.outcomes},
            classes=data.classes,
            image_shape=data.image_shape,
            k=5,
            title="Example explanations",
        )
    return report
