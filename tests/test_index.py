"""Vector indexes behind top_k: exact equals dense scoring, HNSW recall, Milvus Lite
persistence across processes, and refusal of an index built for another model."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import tdakit as tda
from conftest import tiny_data, tiny_mlp
from tdakit.errors import StoreError
from tdakit.scoring.index import ExactIndex, FaissIndex, MilvusIndex

pytest.importorskip("faiss", reason="faiss-cpu is in the test extra")
pytest.importorskip("pymilvus", reason="pymilvus (Milvus Lite) is in the test extra")


def fitted(method_cls=tda.GradDot, n: int = 300, seed_model: int = 0, **kw):
    X, y = tiny_data(n=n)
    method = method_cls(tda.Task(tiny_mlp(seed=seed_model)), **kw).fit((X, y))
    return method, (X[:6], y[:6])


@pytest.mark.parametrize(
    "make",
    [
        lambda: fitted(),
        lambda: fitted(tda.GradCos),
        lambda: fitted(tda.InformationGain, projection=16),
    ],
    ids=["grad_dot", "grad_cos", "information_gain"],
)
@pytest.mark.parametrize("backend", ["exact", "faiss", "milvus"])
def test_exact_index_top_k_equals_dense_scoring(make, backend, tmp_path):
    method, queries = make()
    path = None if backend == "exact" else tmp_path / ("m.db" if backend == "milvus" else "f")
    index = method.build_index(backend, path)
    S = method.scores(queries)
    for opponents in (False, True):
        idx, val = method.top_k(queries, 8, index=index, opponents=opponents)
        ref_idx, ref_val = method.top_k(queries, 8, opponents=opponents)
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(val, ref_val, rtol=1e-5, atol=1e-6)  # float32 index
        torch.testing.assert_close(S.gather(1, idx), val, rtol=1e-5, atol=1e-6)


def test_hnsw_recall_on_gradient_features():
    from tdakit.data import load_digits
    from tdakit.models import build_model

    split = load_digits(seed=0)
    model = build_model("mlp", split.image_shape, split.num_classes, seed=0, hidden=(32,))
    method = tda.GradDot(tda.Task(model), projection=64).fit((split.X_train, split.y_train))
    queries = (split.X_test[:100], split.y_test[:100])
    exact, _ = method.top_k(queries, 10)
    approx = method.build_index("faiss", kind="hnsw", m=16, ef_search=64)
    found, _ = method.top_k(queries, 10, index=approx)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact, strict=True))
    assert recall / exact.numel() >= 0.95


def test_milvus_lite_index_survives_a_process_restart(tmp_path):
    uri = tmp_path / "attribution.db"
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import tdakit as tda
        from conftest import tiny_data, tiny_mlp
        X, y = tiny_data(n=300)
        method = tda.GradDot(tda.Task(tiny_mlp())).fit((X, y))
        index = method.build_index("milvus", {str(uri)!r})
        idx, val = method.top_k((X[:6], y[:6]), 8, index=index)
        torch.save({{"idx": idx, "val": val}}, {str(tmp_path / "first.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    first = torch.load(tmp_path / "first.pt")
    method, queries = fitted()
    reopened = method.build_index("milvus", uri)  # same model and data: reused, not rebuilt
    assert isinstance(reopened, MilvusIndex) and len(reopened) == 300
    idx, val = method.top_k(queries, 8, index=reopened)
    assert torch.equal(idx, first["idx"])
    torch.testing.assert_close(val, first["val"])
    reopened.close()


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_index_of_another_model_is_refused_then_rebuilt(backend, tmp_path):
    path = tmp_path / ("m.db" if backend == "milvus" else "f")
    method, queries = fitted()
    method.build_index(backend, path)
    X, y = tiny_data(n=300)
    other = tda.GradDot(tda.Task(tiny_mlp(seed=7))).fit((X, y))
    with pytest.raises(StoreError, match="different model"):
        other.build_index(backend, path)
    rebuilt = other.build_index(backend, path, rebuild=True)
    idx, _ = other.top_k(queries, 5, index=rebuilt)
    assert torch.equal(idx, other.top_k(queries, 5)[0])


def test_index_checks():
    index = ExactIndex(4)
    with pytest.raises(tda.DataError, match="vectors"):
        index.add(torch.arange(3), torch.zeros(3, 5))
    index.add(torch.arange(3), torch.randn(3, 4))
    with pytest.raises(tda.ConfigError, match="between 1 and the index size"):
        index.search(torch.zeros(1, 4), 4)
    with pytest.raises(tda.DataError, match="NaN"):
        index.add(torch.tensor([9]), torch.full((1, 4), float("nan")))
    with pytest.raises(StoreError, match="No complete FAISS index"):
        FaissIndex.open("/nonexistent/index")
    method, queries = fitted()
    small = method.build_index("exact")
    trak = tda.TRAK(tda.Task(tiny_mlp()), checkpoints=[tiny_mlp(), tiny_mlp(seed=2)], projection=8)
    trak.fit(tiny_data(n=300))
    with pytest.raises(tda.ConfigError, match="ensemble"):
        trak.build_index("exact")
    other, _ = fitted(n=200)  # other data: refused before any search
    with pytest.raises(StoreError, match="different data"):
        other.top_k(queries, 3, index=small)
    retrained, _ = fitted(seed_model=5)  # same data, another model: refused too
    with pytest.raises(StoreError, match="different model"):
        retrained.top_k(queries, 3, index=small)
