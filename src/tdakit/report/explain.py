"""Explanation blocks: a query next to each method's top proponents and opponents."""

from __future__ import annotations

import html as _html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from tdakit.errors import require
from tdakit.reliability.stats import ScoreDistribution
from tdakit.report.plots import data_uri, example_png, feature_bar_figure, figure_png
from tdakit.report.reliability import badge as verdict_badge

__all__ = ["Ranking", "explanation_html"]


def _esc(text: object) -> str:
    return _html.escape(str(text), quote=True)


@dataclass
class Ranking:
    """Each query's top proponents (highest scores) and opponents (lowest), best first.

    All four tensors are ``[n_query, k]``: training indices and their scores.
    """

    proponents: torch.Tensor
    proponent_scores: torch.Tensor
    opponents: torch.Tensor
    opponent_scores: torch.Tensor

    @classmethod
    def from_scores(cls, S: torch.Tensor, k: int) -> Ranking:
        """Top-``k`` of a dense score matrix ``[n_query, n_train]``."""
        require(S.ndim == 2, f"Scores must be [n_query, n_train], got shape {tuple(S.shape)}.")
        require(k >= 1, f"k must be >= 1, got {k}.")
        S = S.detach().to("cpu")
        k = min(k, S.shape[1])
        pv, pi = S.topk(k, dim=1)
        ov, oi = S.topk(k, dim=1, largest=False)
        return cls(pi, pv, oi, ov)

    @classmethod
    def from_method(cls, method, queries, k: int) -> Ranking:
        """Streaming top-``k`` from a fitted attribution method (no dense matrix)."""
        pi, pv = method.top_k(queries, k)
        oi, ov = method.top_k(queries, k, opponents=True)
        return cls(pi.cpu(), pv.cpu(), oi.cpu(), ov.cpu())


def _label(y: torch.Tensor, classes: Sequence[str] | None) -> str:
    if y.numel() == 1 and not y.is_floating_point():
        i = int(y)
        return classes[i] if classes is not None and 0 <= i < len(classes) else str(i)
    if y.numel() == 1:
        return f"{float(y):.3g}"
    return "[" + ", ".join(f"{float(v):.3g}" for v in y.reshape(-1)[:4]) + "]"


class _Images:
    """Cached ``<img>`` tags of examples, on one colour scale for the whole block."""

    def __init__(self, X: torch.Tensor, image_shape: Sequence[int] | None) -> None:
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        finite = X[torch.isfinite(X)] if X.numel() else X
        lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
        self.value_range = (lo, hi)
        self.is_image = self.image_shape is not None and len(self.image_shape) == 3
        self._cache: dict[int, str] = {}

    def tag(self, x: torch.Tensor, alt: str) -> str:
        uri = data_uri(example_png(x, self.image_shape, self.value_range))
        cls = "px" if self.is_image else "px strip"
        return f'<img class="{cls}" src="{uri}" alt="{_esc(alt)}">'

    def train_tag(self, X: torch.Tensor, i: int) -> str:
        if i not in self._cache:
            self._cache[i] = self.tag(X[i], f"training example {i}")
        return self._cache[i]

    def query_tag(self, x: torch.Tensor, alt: str) -> str:
        if self.is_image:
            return self.tag(x, alt)
        uri = data_uri(figure_png(feature_bar_figure(x), dpi=90))
        return f'<img src="{uri}" alt="{_esc(alt)}">'


def _thumbs(
    idx: torch.Tensor,
    vals: torch.Tensor,
    train: tuple[torch.Tensor, torch.Tensor],
    query_label: str,
    images: _Images,
    classes: Sequence[str] | None,
    verdict: Callable[[int], str] | None = None,
) -> str:
    X, y = train
    out = []
    for i, v in zip(idx.tolist(), vals.tolist(), strict=True):
        label = _label(y[i], classes)
        same = "same" if label == query_label else "diff"
        extra = verdict(i) if verdict is not None else ""
        out.append(
            f'<div class="thumb" title="training example {i}">{images.train_tag(X, i)}'
            f'<span class="{same}">{_esc(label)}</span><span>{v:+.3g}</span>'
            f"<span>#{i}</span>{extra}</div>"
        )
    return f'<div class="thumbs">{"".join(out)}</div>'


def explanation_html(
    queries: tuple[torch.Tensor, torch.Tensor],
    train: tuple[torch.Tensor, torch.Tensor],
    rankings: Mapping[str, Ranking | torch.Tensor],
    *,
    predictions: torch.Tensor | None = None,
    classes: Sequence[str] | None = None,
    image_shape: Sequence[int] | None = None,
    k: int = 5,
    query_names: Sequence[str] | None = None,
    verdicts: Mapping[str, ScoreDistribution] | None = None,
) -> str:
    """HTML of one block per query; see :meth:`tdakit.report.Report.add_explanations`."""
    Xq, yq = (t.detach().cpu() for t in queries)
    Xt, yt = (t.detach().cpu() for t in train)
    nq, n_train = len(Xq), len(Xt)
    require(len(yq) == nq and len(yt) == n_train, "Inputs and labels must have equal lengths.")
    require(len(rankings) > 0, "add_explanations needs at least one method's ranking.")
    ranks: dict[str, Ranking] = {}
    for name, r in rankings.items():
        r = Ranking.from_scores(r, k) if isinstance(r, torch.Tensor) else r
        require(
            r.proponents.shape[0] == nq and r.opponents.shape[0] == nq,
            f"Ranking of {name!r} covers {r.proponents.shape[0]} queries, expected {nq}.",
        )
        top = int(max(r.proponents.max(), r.opponents.max()))
        require(top < n_train, f"Ranking of {name!r} points at training index {top} >= {n_train}.")
        ranks[name] = r
    if predictions is not None:
        predictions = predictions.detach().cpu()
        require(len(predictions) == nq, f"Got {len(predictions)} predictions for {nq} queries.")
    names = list(query_names) if query_names is not None else [f"Query {q + 1}" for q in range(nq)]
    require(len(names) == nq, f"Got {len(names)} query names for {nq} queries.")

    images = _Images(Xt, image_shape)
    blocks = []
    for q in range(nq):
        label = _label(yq[q], classes)
        meta = f"<b>{_esc(names[q])}</b><br>label: <b>{_esc(label)}</b>"
        if predictions is not None:
            pred = _label(predictions[q], classes)
            meta += f" &middot; prediction: <b>{_esc(pred)}</b>"
            if not predictions.is_floating_point():
                badge, text = ("right", "correct") if pred == label else ("wrong", "misclassified")
                meta += f' <span class="badge {badge}">{text}</span>'
        rows = ""
        for m, r in ranks.items():
            dist = (verdicts or {}).get(m)
            verdict = None if dist is None else (lambda i, d=dist, q=q: verdict_badge(d, q, i))
            pro = _thumbs(
                r.proponents[q], r.proponent_scores[q], (Xt, yt), label, images, classes, verdict
            )
            opp = _thumbs(
                r.opponents[q], r.opponent_scores[q], (Xt, yt), label, images, classes, verdict
            )
            rows += f'<tr><td class="mname">{_esc(m)}</td><td>{pro}</td><td>{opp}</td></tr>'
        blocks.append(
            f'<div class="query"><div class="qhead"><div class="qimg">'
            f'{images.query_tag(Xq[q], names[q])}</div><div class="meta">{meta}</div></div>'
            '<table class="expl"><thead><tr><th>method</th><th>top proponents (helped)</th>'
            "<th>top opponents (hurt)</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>"
        )
    legend = (
        '<p class="caption">Under each training image: its label (green = same as the '
        "query's label, red = different), its score (positive = helped the query) and its "
        "index in the training set; where the method was re-run over posterior samples, "
        "also whether the score is reliable (with its signal-to-noise ratio).</p>"
    )
    return legend + "".join(blocks)
