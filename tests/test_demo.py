"""The demo pipeline end to end on a reduced configuration, query choice, method discovery."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import tdakit as tda
from tdakit.demo import METHODS, MethodEntry, pick_queries, run_demo
from tdakit.errors import TdakitError
from tdakit.report import escape

TINY = dict(
    n_queries=2,
    seed=0,
    progress=False,
    epochs=2,
    hidden=(8,),
    n_train=200,
    n_checkpoints=2,
    top_k=3,
    reliability_samples=3,
)


def _available() -> list[MethodEntry]:
    return [e for e in METHODS if e.resolve()[0] is not None]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    path = run_demo(out, **TINY)
    return path, path.read_text(encoding="utf-8")


def test_demo_writes_report_and_scores(demo_out):
    path, _ = demo_out
    assert path.name == "report.html"
    payload = torch.load(path.parent / "scores.pt")
    available = _available()
    assert len(available) >= 5  # the core methods are always there
    assert list(payload["scores"]) == [e.name for e in available]
    for S in payload["scores"].values():
        assert S.shape == (2, 200) and torch.isfinite(S).all()
    # RandomBaseline's scores depend only on the seed, the query position and n_train
    Xq, yq = payload["queries"]
    train = (torch.zeros(200, *Xq.shape[1:]), torch.zeros(200, dtype=torch.long))
    ref = tda.RandomBaseline(seed=0).fit(train).scores((Xq, yq))
    assert torch.equal(payload["scores"]["RandomBaseline"], ref.float())
    # the first query is a misclassified one (the 2-epoch model makes mistakes)
    assert payload["predictions"][0] != yq[0]
    assert payload["query_indices"].unique().numel() == 2


def test_demo_html_shows_every_method_and_query(demo_out):
    _, html = demo_out
    for entry in METHODS:  # skipped ones appear in the methods table with their reason
        assert escape(entry.name) in html
    blocks = html.split('<div class="query">')[1:]
    assert len(blocks) == 2
    assert "misclassified" in blocks[0]
    available = _available()
    for block in blocks:
        rows = re.findall(r'<td class="mname">([^<]*)</td>', block)
        assert rows == [escape(e.name) for e in available]
    images = re.findall(r'src="data:image/png;base64,', html)
    # loss curve, heatmap, SNR histogram, mean-sd scatter, and per query: its image +
    # 3 proponents + 3 opponents per method
    assert len(images) == 4 + 2 * (1 + 6 * len(available))
    assert "Method agreement" in html and "http" not in html
    # every attributed example carries its verdict; the reliability section explains them
    verdicts = re.findall(r'<span class="badge (right|muted)"', html)
    assert len(verdicts) == 2 * 6 * len(available)
    assert "Reliability" in html and "signal-to-noise ratio" in html


def test_pick_queries_prefers_a_few_misclassified_and_distinct_labels():
    y = torch.arange(40) % 10
    pred = y.clone()
    wrong = torch.tensor([3, 17, 25, 31])
    pred[wrong] = (y[wrong] + 1) % 10
    idx = pick_queries(y, pred, 6, seed=1)
    assert idx.tolist() == pick_queries(y, pred, 6, seed=1).tolist()
    assert len(set(idx.tolist())) == 6
    n_wrong = int((pred[idx] != y[idx]).sum())
    assert n_wrong == 2 and bool((pred[idx[:2]] != y[idx[:2]]).all())
    assert len(set(y[idx].tolist())) == 6  # enough labels to keep them distinct
    correct = pick_queries(y, y, 5, seed=0)
    assert len(set(y[correct].tolist())) == 5
    with pytest.raises(TdakitError, match="exceeds"):
        pick_queries(y, pred, 41, seed=0)


def test_missing_optional_methods_are_skipped_with_a_reason(tmp_path, capsys):
    ghost = MethodEntry("Ghost", {"method": "no_such_method"}, "test entry", optional=True)
    assert ghost.resolve() == (
        None,
        "method 'no_such_method' is not available in this installation",
    )
    with pytest.raises(TdakitError, match="install is broken"):
        MethodEntry("Required", {"method": "no_such_method"}, "test entry").resolve()
    tiny = {**TINY, "epochs": 1, "n_train": 50, "n_checkpoints": 1}
    path = run_demo(tmp_path, **tiny, methods=[METHODS[0], ghost])
    out = capsys.readouterr().out
    assert "skipping Ghost: method 'no_such_method' is not available" in out
    html = path.read_text(encoding="utf-8")
    assert "skipped: method &#x27;no_such_method&#x27; is not available" in html or (
        "skipped: method 'no_such_method' is not available" in html
    )
    assert list(torch.load(tmp_path / "scores.pt")["scores"]) == [METHODS[0].name]


class _Exploding(MethodEntry):
    def build(self, ctx):
        raise RuntimeError("factory bug")


def test_method_errors_are_not_swallowed_and_nothing_is_written(tmp_path):
    boom = _Exploding("Boom", {"method": "grad_dot"}, "raises", optional=True)
    tiny = {**TINY, "epochs": 1, "n_train": 50, "n_checkpoints": 1}
    with pytest.raises(RuntimeError, match="factory bug"):
        run_demo(tmp_path / "out", **tiny, methods=[boom])
    assert not (tmp_path / "out").exists()


def test_unwritable_output_fails_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a directory cannot be created below a file (even as root)
    with pytest.raises(TdakitError, match="Cannot write to the output directory"):
        run_demo(blocker / "out", progress=False, epochs=1000)  # fails before training
    with pytest.raises(TdakitError, match="empty path"):
        run_demo("", progress=False)


def test_bad_output_path_and_options(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    with pytest.raises(TdakitError, match="not a directory"):
        run_demo(target, progress=False)
    assert target.read_text() == "keep me"
    with pytest.raises(TdakitError, match="n_train"):
        run_demo(tmp_path / "x", progress=False, n_train=5)
    with pytest.raises(TdakitError, match="n_checkpoints"):
        run_demo(tmp_path / "x", progress=False, epochs=2, n_checkpoints=3)


def test_same_seed_same_scores(tmp_path):
    chosen = [e for e in METHODS if e.name in ("GradDot", "TracIn", "RandomBaseline")]
    tiny = {**TINY, "epochs": 1, "n_train": 60, "n_checkpoints": 1, "methods": chosen}
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_demo(tmp_path / name, **{**tiny, "seed": seed})
        runs.append(torch.load(tmp_path / name / "scores.pt"))
    assert list(runs[0]["scores"]) == [e.name for e in chosen]
    for key, S in runs[0]["scores"].items():
        assert torch.equal(S, runs[1]["scores"][key])
        assert not torch.equal(S, runs[2]["scores"][key])
