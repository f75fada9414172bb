"""The demo's report page: setup, methods, agreement and explanations of a finished run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tdakit.report.html import Report
from tdakit.report.plots import line_figure

if TYPE_CHECKING:
    from tdakit.demo import DemoResult

__all__ = ["build_demo_report"]

_READING = (
    "Each query below is a test image the model classified. For every attribution method, "
    "the top proponents are the training images with the highest scores: by that method's "
    "account they helped the model towards the query's label (removing them would raise the "
    "query's loss). The top opponents have the lowest scores: they pushed the other way. "
    "Methods built on the same loss gradients (GradDot, GradCos, TracIn) tend to agree; "
    "curvature-corrected ones (influence functions, TRAK) can rank quite differently, and "
    "the agreement table shows how much. RepresentationSimilarity only measures how alike "
    "two inputs look to the model; "
    "RandomBaseline shows what chance looks like."
)


def build_demo_report(result: DemoResult, top_k: int) -> Report:
    """Compose the demo's HTML report from a finished run."""
    done = [r for r in result.runs if r.scores is not None]
    split = result.split
    report = Report(
        "tdakit demo: which training examples explain these predictions?",
        f"{len(done)} attribution methods, {len(result.query_idx)} test queries, "
        f"digits MLP; ran in {result.seconds:.1f} s",
    )
    report.add_section("Setup")
    rows = [[k, v] for k, v in result.config.items()]
    rows += [
        ["final training loss", result.losses[-1]],
        ["test accuracy", f"{100 * result.test_accuracy:.1f} %"],
    ]
    report.add_table(["setting", "value"], rows)
    report.add_figure(
        line_figure(result.losses, "epoch", "mean training loss", "training loss", log=True),
        caption="Mean cross-entropy over the training set in each epoch.",
    )
    report.add_section("How to read this report").add_text(_READING)
    report.add_section("Methods")
    yq = split.y_test[result.query_idx]
    rows = []
    for r in result.runs:
        same = float("nan")
        if r.scores is not None:  # share of top-k proponents labelled like their query
            top = r.scores.topk(min(top_k, r.scores.shape[1]), dim=1).indices
            same = round(100 * float((split.y_train[top] == yq[:, None]).double().mean()))
        secs = (
            [float("nan")] * 2
            if r.skipped
            else [round(r.fit_seconds, 2), round(r.score_seconds, 2)]
        )
        rows.append([r.name, r.description, *secs, same, r.status])
    report.add_table(
        [
            "method",
            "what it computes",
            "fit (s)",
            "scores (s)",
            f"top-{top_k} proponents with the query's label (%)",
            "status",
        ],
        rows,
    )
    scores = {r.name: r.scores for r in done}
    if len(scores) >= 2:
        report.add_agreement(scores)
    probs = result.probabilities.gather(1, result.predictions[:, None]).squeeze(1)
    names = [
        f"Test example #{int(i)} (model confidence {float(p):.2f})"
        for i, p in zip(result.query_idx, probs, strict=True)
    ]
    dists = {r.name: r.reliability for r in done if r.reliability is not None}
    if dists:
        report.add_reliability(dists, result.sampler)
    report.add_explanations(
        (split.X_test[result.query_idx], split.y_test[result.query_idx]),
        (split.X_train, split.y_train),
        scores,
        predictions=result.predictions,
        classes=split.classes,
        image_shape=split.image_shape,
        k=top_k,
        query_names=names,
        verdicts=dists,
        title="Explanations of the test predictions",
    )
    return report
