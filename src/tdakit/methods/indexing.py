"""Feature methods and vector indexes: the training vectors go into the index once; a
query's preconditioned vector is one maximum-inner-product search (its negation for
opponents)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tdakit.errors import ConfigError, StoreError, require
from tdakit.scoring import check_k
from tdakit.scoring.index import (
    BACKENDS,
    ExactIndex,
    FaissIndex,
    MilvusIndex,
    VectorIndex,
    check_meta,
)

if TYPE_CHECKING:
    from tdakit.methods.feature_method import FeatureMethod

KINDS = {"faiss": {"flat": "flat", "hnsw": "hnsw"}, "milvus": {"flat": "FLAT", "hnsw": "HNSW"}}


def index_meta(method: FeatureMethod) -> dict[str, Any]:
    """What the index must match: model, code, data and the method's configuration."""
    meta = method._store_meta(method._fitted_source())
    return {k: str(v) if not isinstance(v, str) else v for k, v in meta.items()} | {
        "score": type(method).__name__
    }


def build_index(
    method: FeatureMethod,
    backend: str,
    path: str | Path | None,
    *,
    kind: str,
    collection: str,
    rebuild: bool,
    **options: Any,
) -> VectorIndex:
    require(backend in BACKENDS, f"Unknown index backend {backend!r}; use one of {BACKENDS}.")
    require(
        method._model_slices() is None,
        f"{type(method).__name__} is an ensemble; index its members separately.",
    )
    features, _ = method._fitted()
    meta = index_meta(method)
    dim = features.dim
    if backend == "exact":
        index: VectorIndex = ExactIndex(dim, meta)
    elif backend == "faiss":
        require(kind in KINDS["faiss"], f"kind must be one of {tuple(KINDS['faiss'])}.")
        if path is not None and (Path(path) / "meta.json").exists() and not rebuild:
            index = FaissIndex.open(path, expected=meta)
            require(
                index.kind == KINDS["faiss"][kind],
                f"The FAISS index at {path} is a {index.kind!r} index, not {kind!r}; pass "
                "rebuild=True to replace it.",
                StoreError,
            )
            return index
        index = FaissIndex(dim, KINDS["faiss"][kind], meta=meta, **options)
    else:
        require(path is not None, "The Milvus backend needs path= (a *.db file or a URI).")
        require(kind in KINDS["milvus"], f"kind must be one of {tuple(KINDS['milvus'])}.")
        if not rebuild:
            try:
                index = MilvusIndex.open(
                    str(path), collection, expected=meta, token=options.get("token")
                )
            except ConfigError:
                raise
            except StoreError as err:  # missing (rebuilt below) or refused (re-raised)
                if "No complete Milvus index" not in str(err):
                    raise
            else:
                require(
                    index.index_type == KINDS["milvus"][kind],
                    f"The Milvus index {collection!r} is {index.index_type}, not {kind!r}; pass "
                    "rebuild=True to replace it.",
                    StoreError,
                )
                return index
        index = MilvusIndex(
            str(path),
            collection,
            dim,
            index_type=KINDS["milvus"][kind],
            meta=meta,
            rebuild=True,
            **options,
        )
    for a, b, T in method.train_blocks():
        index.add(torch.arange(a, b), T)
    if isinstance(index, MilvusIndex):
        index.commit()
    if isinstance(index, FaissIndex) and path is not None:
        index.save(path)
    return index


def index_top_k(
    method: FeatureMethod, index: VectorIndex, queries: Any, k: int, opponents: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    check_k(k, method.n_train)
    expected = method.__dict__.get("_index_meta")
    if expected is None or expected[0] is not method.features_:
        expected = method.__dict__["_index_meta"] = (method.features_, index_meta(method))
    check_meta(
        {k: v for k, v in index.meta.items() if k in expected[1]},
        expected[1],
        f"the {index.backend} index passed to top_k",
    )
    require(
        len(index) == method.n_train and index.dim == method._fitted()[0].dim,
        f"The index holds {len(index)} vectors of dim {index.dim}, but the method has "
        f"{method.n_train} training examples of dim {method._fitted()[0].dim}; rebuild it.",
    )
    idx, val = [], []
    for _, _, Q in method._query_states(queries):
        ids, ip = index.search(-Q if opponents else Q, k)
        scores = method._score_transform((-ip if opponents else ip).to(Q.dtype))
        idx.append(ids)
        val.append(scores)
    return torch.cat(idx), torch.cat(val)
