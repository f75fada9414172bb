"""A self-contained HTML report: one file, inline CSS, images embedded as base64 PNGs.

Build it from generic blocks (sections, text, tables, figures, explanations, method
agreement) and :meth:`Report.write` it atomically. All text is HTML-escaped; only
:meth:`Report.add_section`'s ``html`` argument is inserted verbatim.
"""

from __future__ import annotations

import html as _html
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure

from tdakit.errors import require
from tdakit.reliability.stats import ScoreDistribution
from tdakit.report.agreement import agreement_matrix
from tdakit.report.explain import Ranking, explanation_html
from tdakit.report.plots import data_uri, figure_png, heatmap_figure
from tdakit.storage.fileio import atomic_write

__all__ = ["Report", "escape", "format_value"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  margin:0;color:#1d2430;background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
header h1{margin:0 0 4px;font-size:1.7em}
header p.sub{margin:0;color:#5b6573}
nav.toc{margin:14px 0 4px;font-size:.92em}
nav.toc a{margin-right:14px;color:#2457a6;text-decoration:none}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:14px 20px;
  margin:18px 0}
section h2{margin:2px 0 10px;font-size:1.25em}
table.data{border-collapse:collapse;font-size:.9em;margin:8px 0}
table.data th,table.data td{border:1px solid #dde1e7;padding:4px 9px;text-align:left}
table.data th{background:#eef1f5;vertical-align:bottom}
div.scroll{overflow-x:auto;max-width:100%}
table.data td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:10px 0}
figure img{max-width:100%}
figcaption,p.caption{color:#5b6573;font-size:.86em}
.query{border-top:1px solid #dde1e7;padding:12px 0}
.query:first-of-type{border-top:none}
.qhead{display:flex;gap:18px;align-items:center;margin-bottom:6px}
.qhead .meta{font-size:.95em}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:.8em;color:#fff}
.badge.wrong{background:#c0392b}.badge.right{background:#2e8b57}
.badge.muted{background:#9a9a9a}
.thumb .badge{font-size:.85em;padding:0 4px;margin-top:1px}
table.expl{border-collapse:collapse;width:100%}
table.expl td,table.expl th{vertical-align:top;padding:4px 6px;border-top:1px solid #eef1f5}
table.expl th{text-align:left;font-size:.85em;color:#5b6573;font-weight:600}
td.mname{font-weight:600;white-space:nowrap;font-size:.9em;width:1%}
.thumbs{display:flex;flex-wrap:wrap;gap:6px}
.thumb{display:flex;flex-direction:column;align-items:center;font-size:.72em;width:68px}
.thumb span{white-space:nowrap}
.thumb .same{color:#2e8b57}.thumb .diff{color:#c0392b}
img.px{image-rendering:pixelated;image-rendering:crisp-edges;border:1px solid #ccd2da;
  background:#fff}
.qimg img.px{width:112px;height:112px}
.qimg img.strip{width:240px;height:24px}
.thumb img.px{width:56px;height:56px}
.thumb img.strip{width:64px;height:12px}
"""


def escape(text: object) -> str:
    """HTML-escape ``str(text)``, quotes included."""
    return _html.escape(str(text), quote=True)


def format_value(value: object) -> str:
    """Numbers compactly (4 significant digits, NaN as an en dash), anything else as text."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    v = float(value)  # type: ignore[arg-type]
    if math.isnan(v):
        return "–"
    return f"{v:.4g}"


def _breakable(text: object) -> str:
    """Escaped text with optional line breaks inside CamelCase words (narrow table headers)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "<wbr>", escape(text))


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


class Report:
    """An HTML report assembled from blocks, written as one self-contained file.

    Blocks go into the current section; :meth:`add_section` starts a new one.

    >>> rep = Report("My analysis")
    >>> rep.add_section("Data").add_table(["split", "n"], [["train", 100]])
    >>> rep.write("report.html")
    """

    def __init__(self, title: str, subtitle: str | None = None) -> None:
        self.title = str(title)
        self.subtitle = subtitle
        self._sections: list[tuple[str, str, list[str]]] = []  # (anchor, title, blocks)

    # --- building blocks -----------------------------------------------------------------
    def add_section(self, title: str, html: str = "") -> Report:
        """Start a new section titled ``title`` (escaped); ``html`` is inserted verbatim."""
        anchor = f"s{len(self._sections) + 1}"
        self._sections.append((anchor, str(title), [html] if html else []))
        return self

    def add_html(self, html: str) -> Report:
        """Append trusted HTML verbatim to the current section."""
        if not self._sections:
            self._sections.append(("s0", "", []))
        self._sections[-1][2].append(html)
        return self

    def add_text(self, text: str, *, caption: bool = False) -> Report:
        """A paragraph of plain text (escaped)."""
        return self.add_html(f"<p{' class=caption' if caption else ''}>{escape(text)}</p>")

    def add_table(
        self,
        header: Sequence[object],
        rows: Sequence[Sequence[object]],
        caption: str | None = None,
    ) -> Report:
        """A table; cells are escaped, numbers formatted compactly and right-aligned."""
        header = list(header)
        for r, row in enumerate(rows):
            require(
                len(row) == len(header),
                f"Table row {r} has {len(row)} cells but the header has {len(header)}; "
                "give every row one cell per column.",
            )
        head = "".join(f"<th>{_breakable(h)}</th>" for h in header)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td{' class=num' if _is_number(c) else ''}>{escape(format_value(c))}</td>"
                for c in row
            )
            + "</tr>"
            for row in rows
        )
        cap = f"<caption>{escape(caption)}</caption>" if caption else ""
        return self.add_html(
            f'<div class="scroll"><table class="data">{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>"
        )

    def add_figure(
        self, fig: Figure, caption: str | None = None, *, dpi: int = 110, alt: str = ""
    ) -> Report:
        """A matplotlib figure, rendered to PNG and embedded inline."""
        uri = data_uri(figure_png(fig, dpi=dpi))
        cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        alt = alt or caption or "figure"
        return self.add_html(f'<figure><img src="{uri}" alt="{escape(alt)}">{cap}</figure>')

    def add_explanations(
        self,
        queries: tuple[torch.Tensor, torch.Tensor],
        train: tuple[torch.Tensor, torch.Tensor],
        rankings: Mapping[str, Ranking | torch.Tensor],
        *,
        predictions: torch.Tensor | None = None,
        classes: Sequence[str] | None = None,
        image_shape: Sequence[int] | None = None,
        k: int = 5,
        query_names: Sequence[str] | None = None,
        title: str = "Explanations",
        verdicts: Mapping[str, ScoreDistribution] | None = None,
    ) -> Report:
        """One block per query: the query, its label and prediction, and per method its
        top-``k`` proponents and opponents (images, scores, labels).

        ``rankings`` maps method names to a :class:`Ranking` or a score matrix
        ``[n_query, n_train]`` (its top-``k`` are taken). ``predictions`` are class indices
        (or values for regression); ``classes`` names class indices; ``image_shape`` is
        ``(C, H, W)`` for images, ``None`` for tabular rows. ``verdicts`` maps method names
        to their :class:`~tdakit.reliability.ScoreDistribution`: each attributed example
        then carries a reliable / not-reliable badge with its SNR.
        """
        self.add_section(title)
        return self.add_html(
            explanation_html(
                queries,
                train,
                rankings,
                predictions=predictions,
                classes=classes,
                image_shape=image_shape,
                k=k,
                query_names=query_names,
                verdicts=verdicts,
            )
        )

    def add_reliability(
        self,
        dists: Mapping[str, ScoreDistribution],
        sampler: str,
        title: str = "Reliability",
    ) -> Report:
        """Section: what the verdicts mean, the reliable fraction per method, the SNR
        histogram and the mean-versus-sd scatter. ``sampler`` says how the posterior samples
        were drawn (plain words)."""
        from tdakit.report import reliability as rel

        require(len(dists) > 0, "add_reliability needs at least one method's distribution.")
        first = next(iter(dists.values()))
        self.add_section(title)
        self.add_text(rel.reading(first, sampler))
        self.add_table(rel.SUMMARY_HEADER, rel.summary_rows(dists))
        self.add_figure(
            rel.snr_histogram_figure(dists),
            caption="Distribution of |SNR| over all (query, training example) "
            "pairs; right of the dashed line = reliable at the chosen level.",
        )
        return self.add_figure(
            rel.mean_sd_figure(dists),
            caption="Each pair's mean score against its standard deviation "
            "over posterior samples; green = reliable.",
        )

    def add_agreement(
        self, scores: Mapping[str, torch.Tensor], title: str = "Method agreement"
    ) -> torch.Tensor:
        """Section with the mean per-query Spearman correlation between every pair of methods,
        as a table and a heatmap; returns the matrix."""
        A = agreement_matrix(scores)
        names = list(scores)
        self.add_section(title)
        self.add_text(
            "Each cell is the Spearman rank correlation between two methods' scores of all "
            "training examples, averaged over the queries: 1 = same ranking, 0 = unrelated, "
            "-1 = reversed.",
            caption=True,
        )
        rows = [[a, *[round(float(v), 2) for v in A[i]]] for i, a in enumerate(names)]
        self.add_table(["method", *names], rows)
        self.add_figure(heatmap_figure(A, names, "mean per-query Spearman correlation"))
        return A

    # --- output ----------------------------------------------------------------------------
    def render(self) -> str:
        """The complete HTML document."""
        toc = "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t, _ in self._sections if t)
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(self.title)}</title><style>{_CSS}</style></head><body><main>",
            f"<header><h1>{escape(self.title)}</h1>",
            f'<p class="sub">{escape(self.subtitle)}</p>' if self.subtitle else "",
            f'<nav class="toc">{toc}</nav>' if toc else "",
            "</header>",
        ]
        for anchor, title, blocks in self._sections:
            heading = f"<h2>{escape(title)}</h2>" if title else ""
            parts.append(f'<section id="{anchor}">{heading}{"".join(blocks)}</section>')
        parts.append("</main></body></html>")
        return "\n".join(parts)

    def write(self, path: str | Path) -> Path:
        """Write the report to ``path`` atomically (temp file + rename); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.render().encode("utf-8")
        atomic_write(path, lambda f: f.write(data))
        return path
