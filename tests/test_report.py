"""The HTML report: escaping, embedded images only, explanation order, agreement, atomic write."""

from __future__ import annotations

import base64
import os
import re

import numpy as np
import pytest
import scipy.stats
import torch

from tdakit.errors import TdakitError
from tdakit.report import Ranking, Report, agreement_matrix
from tdakit.report.plots import line_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ATTR = re.compile(r'\b(src|href)="([^"]*)"')


def _images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _check_self_contained(html: str) -> int:
    """Every src is an embedded PNG, every href an in-page anchor; returns the image count."""
    n_img = 0
    for attr, value in ATTR.findall(html):
        if attr == "href":
            assert value.startswith("#"), value
            continue
        assert value.startswith("data:image/png;base64,"), value[:60]
        assert base64.b64decode(value.split(",", 1)[1]).startswith(PNG_MAGIC)
        n_img += 1
    assert "http://" not in html and "https://" not in html and "url(" not in html
    assert "<script" not in html and "<link" not in html
    return n_img


def test_text_is_escaped_everywhere():
    evil = '<script>alert("x")</script>&'
    rep = Report(evil, subtitle=evil)
    rep.add_section(evil).add_text(evil)
    rep.add_table([evil, "n"], [[evil, 3], ['<img src=x onerror="y">', 2.5]], caption=evil)
    Xq, yq = _images(1)
    Xt, yt = _images(8, seed=1)
    rep.add_explanations(
        (Xq, yq),
        (Xt, yt),
        {evil: torch.randn(1, 8)},
        classes=[evil, "b", "c"],
        image_shape=(1, 6, 6),
        k=2,
        query_names=[evil],
        title=evil,
    )
    html = rep.render()
    _check_self_contained(html)
    assert "<script>" not in html and "onerror=" not in html.replace("onerror=&quot;", "")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in html
    assert "&lt;img src=x onerror=&quot;y&quot;&gt;" in html


def test_figures_and_examples_are_embedded_pngs():
    rep = Report("figures")
    rep.add_figure(line_figure([3.0, 2.0, 1.5], "epoch", "loss"), caption="curve")
    Xq, yq = _images(2)
    Xt, yt = _images(10, seed=1)
    rep.add_explanations((Xq, yq), (Xt, yt), {"a": torch.randn(2, 10)}, image_shape=(1, 6, 6), k=3)
    n_img = _check_self_contained(rep.render())
    # one figure, 2 query images, and per query 3 proponents + 3 opponents
    assert n_img == 1 + 2 + 2 * 6


def test_tabular_examples_render_as_plots_and_strips():
    gen = torch.Generator().manual_seed(0)
    Xt, yt = torch.randn(12, 5, generator=gen), torch.randn(12, generator=gen)
    Xq, yq = torch.randn(2, 5, generator=gen), torch.randn(2, generator=gen)
    rep = Report("tabular")
    rep.add_explanations((Xq, yq), (Xt, yt), {"m": torch.randn(2, 12)}, k=2)
    html = rep.render()
    assert _check_self_contained(html) == 2 + 2 * 4
    assert html.count('class="px strip"') == 2 * 4


def test_explanations_list_top_proponents_and_opponents_in_order():
    Xq, yq = _images(3)
    Xt, yt = _images(20, seed=1)
    gen = torch.Generator().manual_seed(2)
    scores = {
        "first": torch.randn(3, 20, generator=gen),
        "second": torch.randn(3, 20, generator=gen),
    }
    pred = yq.clone()
    pred[1] = (yq[1] + 1) % 3
    k = 4
    rep = Report("order")
    rep.add_explanations(
        (Xq, yq),
        (Xt, yt),
        scores,
        predictions=pred,
        classes=["zero", "one", "two"],
        image_shape=(1, 6, 6),
        k=k,
    )
    blocks = rep.render().split('<div class="query">')[1:]
    assert len(blocks) == 3
    for q, block in enumerate(blocks):
        assert ("misclassified" in block) == (q == 1)
        assert f"label: <b>{['zero', 'one', 'two'][int(yq[q])]}</b>" in block
        rows = block.split('<td class="mname">')[1:]
        for (name, S), row in zip(scores.items(), rows, strict=True):
            assert row.startswith(name)
            shown = [int(i) for i in re.findall(r'title="training example (\d+)"', row)]
            expect = torch.argsort(S[q], descending=True)[:k].tolist()
            expect += torch.argsort(S[q])[:k].tolist()
            assert shown == expect


def test_ranking_from_scores_matches_argsort():
    S = torch.randn(4, 30, generator=torch.Generator().manual_seed(0))
    r = Ranking.from_scores(S, 5)
    assert torch.equal(r.proponents, torch.argsort(S, dim=1, descending=True)[:, :5])
    assert torch.equal(r.opponents, torch.argsort(S, dim=1)[:, :5])
    assert torch.equal(r.proponent_scores, S.gather(1, r.proponents))
    assert Ranking.from_scores(S, 100).proponents.shape == (4, 30)


@pytest.mark.parametrize("ties", [False, True])
def test_agreement_matrix_equals_scipy_spearman(ties):
    rng = np.random.default_rng(0)
    n_q, n = 5, 40
    draw = (
        (lambda: rng.integers(0, 6, (n_q, n)).astype(float))
        if ties
        else (lambda: rng.standard_normal((n_q, n)))
    )
    base = draw()
    mats = {"a": base, "b": base + 0.5 * draw(), "c": draw(), "d": -base}
    A = agreement_matrix({k: torch.from_numpy(v) for k, v in mats.items()})
    names = list(mats)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            ref = np.mean([scipy.stats.spearmanr(mats[a][q], mats[b][q])[0] for q in range(n_q)])
            assert A[i, j].item() == pytest.approx(ref, abs=1e-12)
    assert torch.allclose(A.diagonal(), torch.ones(4, dtype=A.dtype))
    assert A[0, 3].item() == pytest.approx(-1.0)


def test_agreement_skips_constant_rows_and_checks_shapes():
    S = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    T = S.clone()
    T[1] = 0.0  # undefined correlation in row 1: averaged over rows 0 and 2 only
    A = agreement_matrix({"s": S, "t": T})
    assert A[0, 1].item() == pytest.approx(1.0)
    with pytest.raises(TdakitError, match="same queries"):
        agreement_matrix({"s": S, "t": S[:2]})


def test_add_agreement_adds_table_and_heatmap():
    gen = torch.Generator().manual_seed(0)
    rep = Report("agree")
    A = rep.add_agreement(
        {"x": torch.randn(2, 9, generator=gen), "y": torch.randn(2, 9, generator=gen)}
    )
    html = rep.render()
    assert A.shape == (2, 2) and _check_self_contained(html) == 1
    assert f"<td class=num>{round(A[0, 1].item(), 2):.4g}</td>" in html


def test_table_rejects_ragged_rows():
    with pytest.raises(TdakitError, match="one cell per column"):
        Report("t").add_table(["a", "b"], [[1, 2], [3]])


def test_write_is_atomic(tmp_path, monkeypatch):
    rep = Report("atomic")
    rep.add_text("first version")
    path = rep.write(tmp_path / "sub" / "report.html")
    assert path.read_text(encoding="utf-8") == rep.render()
    assert os.listdir(path.parent) == ["report.html"]

    rep.add_text("second version")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        rep.write(path)
    assert "second version" not in path.read_text(encoding="utf-8")  # old file intact
    assert os.listdir(path.parent) == ["report.html"]  # no temp file left behind
    with pytest.raises(OSError):
        rep.write(tmp_path / "new.html")
    assert not (tmp_path / "new.html").exists()
