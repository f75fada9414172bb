"""Feature methods: a score is ``scale * <P(q), t_i>``, a composition of three stages.

- **features**: ``_featurize(batch, objective)`` gives rows ``[B, d]`` for training
  examples (``objective="train"``) and queries (``"query"``); the training rows are kept as
  :mod:`tdakit.features.matrix` decides (memory, feature store, recomputed);
- **preconditioner**: fitted once in ``_fit_preconditioner`` (identity by default) and
  applied to each block of query features;
- **scale**: a constant (``1/N`` for influence functions).

Optional views: ``_train_view`` maps a stored training block to the score space (Grad-Cos
normalises rows, TRAK multiplies by ``1 - p``), ``_query_view`` does the same for queries
before preconditioning. Ensembles list their models' column ranges in ``_model_slices``.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch

from tdakit.data.sources import Batch, Source
from tdakit.errors import NotFittedError, require
from tdakit.features.matrix import STORAGE, TrainFeatures, build_train_features
from tdakit.features.projection import Projector, make_projector
from tdakit.methods.base import AttributionMethod, TrainBlocks
from tdakit.preconditioners import Identity, Preconditioner
from tdakit.scoring.index import VectorIndex
from tdakit.task import Task


class FeatureMethod(AttributionMethod):
    """Scores ``scale * <precondition(query features), train features>`` in blocks.

    Args:
        projection: ``None`` (exact features), a dimension ``k`` (seeded Rademacher sketch,
            ``seed`` below), a :class:`~tdakit.features.projection.Projector` or its config.
        storage: where training features live: ``"auto"``, ``"memory"``, ``"store"``
            (a feature store on disk) or ``"recompute"`` (see :mod:`tdakit.features.matrix`).
        cache_dir: keep the feature store there, keyed by content, reused by later fits.
        max_memory: bytes of training features kept in memory under ``"auto"``.
        seed: seeds the projection when ``projection`` is an int.
    """

    def __init__(
        self,
        task: Task | None,
        *,
        projection: Projector | int | dict | None = None,
        storage: str = "auto",
        cache_dir: str | Path | None = None,
        max_memory: int = 1 << 30,
        seed: int = 0,
        **kw: Any,
    ) -> None:
        super().__init__(task, **kw)
        require(storage in STORAGE, f"Unknown storage {storage!r}; use one of {STORAGE}.")
        require(
            isinstance(max_memory, int) and not isinstance(max_memory, bool) and max_memory >= 0,
            f"max_memory must be a number of bytes (int >= 0), got {max_memory!r}.",
        )
        require(
            isinstance(seed, int) and not isinstance(seed, bool),
            f"seed must be an int, got {seed!r}.",
        )
        self.projection = projection
        self.projector = make_projector(projection, seed=seed)
        self.storage, self.max_memory, self.seed = storage, max_memory, seed
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        require(
            cache_dir is None or str(cache_dir).strip() != "",
            "cache_dir is an empty path; give a directory name (or None for no cache).",
        )
        self.features_: TrainFeatures | None = None
        self.preconditioner_: Preconditioner | None = None

    scale: float = 1.0

    # --- stages ---------------------------------------------------------------------------
    @abstractmethod
    def _featurize(self, batch: Batch, objective: str) -> torch.Tensor:
        """Feature rows ``[B, d]`` of a batch as training points or as queries."""

    def _feature_width(self) -> int | None:
        """The width ``d`` of the training rows when known before featurising (then
        :meth:`_featurize_into` writes them straight into the feature matrix); ``None``:
        unknown, the rows are featurised and copied."""
        return None

    def _featurize_into(self, batch: Batch, objective: str, out: torch.Tensor) -> None:
        """Write the rows of :meth:`_featurize` into ``out`` ``[B, d]`` (task dtype)."""
        out.copy_(self._featurize(batch, objective))

    def _train_view(self, T: torch.Tensor) -> torch.Tensor:
        return T

    def _query_view(self, Q: torch.Tensor) -> torch.Tensor:
        return Q

    def _fit_preconditioner(self, source: Source) -> Preconditioner:
        return Identity().fit()

    def _model_slices(self) -> list[slice] | None:
        return None

    def _score_transform(self, S: torch.Tensor) -> torch.Tensor:
        """Map inner products to scores (identity; must be increasing, so that top-k by
        inner product, as a vector index computes it, is top-k by score)."""
        return S

    def feature_config(self) -> dict:
        """What, besides model, code and data, determines the training features."""
        return {
            "method": type(self).__name__,
            "projection": None if self.projector is None else self.projector.config,
        }

    # --- fitting --------------------------------------------------------------------------
    def _fit(self, source: Source) -> None:
        self.features_ = self.preconditioner_ = None
        self.features_ = build_train_features(
            lambda b: self._featurize(b, "train"),
            source,
            self.task,
            storage=self.storage,
            batch_size=self.batch_size,
            cache_dir=self.cache_dir,
            meta=lambda: self._store_meta(source),
            max_memory=self.max_memory,
            progress=self.progress,
            desc=f"{type(self).__name__} train features",
            width=self._feature_width,
            featurize_into=lambda b, out: self._featurize_into(b, "train", out),
        )
        self.preconditioner_ = self._fit_preconditioner(source)

    def _store_meta(self, source: Source) -> dict:
        task = self.task
        assert task is not None
        return {
            "model": task.fingerprint(),
            "code": task.code_key(),
            "torch": torch.__version__,
            "params": list(task.param_names),
            "data": source.fingerprint(),
            "config": self.feature_config(),
        }

    def _fitted(self) -> tuple[TrainFeatures, Preconditioner]:
        if self.features_ is None or self.preconditioner_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call .fit(train) first.")
        return self.features_, self.preconditioner_

    def train_blocks(self) -> TrainBlocks:
        """The training features as the scores see them, block by block."""
        features, _ = self._fitted()
        for a, b, T in features.blocks(self.block_size):
            yield a, b, self._train_view(T)

    # --- scoring --------------------------------------------------------------------------
    def query_features(self, batches: list[Batch]) -> torch.Tensor:
        """Preconditioned, scaled query rows ``[n, d]`` of a group of query batches."""
        _, pre = self._fitted()
        Q = self._query_view(torch.cat([self._featurize(b, "query") for b in batches]))
        return (pre.apply(Q) * self.scale).to(Q.dtype)

    def _query_state(self, batches: list[Batch]) -> torch.Tensor:
        return self.query_features(batches)

    def _train_scores(self, Q: torch.Tensor, per_model: bool) -> TrainBlocks:
        slices = self._model_slices() if per_model else None
        require(
            not per_model or slices is not None,
            f"{type(self).__name__} is not an ensemble method; per_model=True applies to "
            "TracIn and TRAK.",
        )
        for a, b, T in self.train_blocks():
            T = T.to(Q.dtype)
            if slices is None:
                yield a, b, self._score_transform(Q @ T.T)
            else:
                w = len(slices) if self.ensemble_reduction == "mean" else 1
                yield a, b, torch.stack([w * (Q[:, s] @ T[:, s].T) for s in slices])

    def _train_range(self, Q: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        features, _ = self._fitted()
        T = self._train_view(features.rows(start, stop)).to(Q.dtype)
        return self._score_transform((Q * T).sum(1))

    def scores(self, queries: Any) -> torch.Tensor:
        features, _ = self._fitted()
        if features.storage != "memory":
            return super().scores(queries)
        # Dense anyway and the features are in memory: one product per query block.
        T = self._train_view(features.T)  # type: ignore[attr-defined]
        rows = [
            self._score_transform(Q @ T.to(Q.dtype).T) for _, _, Q in self._query_states(queries)
        ]
        return torch.cat(rows)

    # --- vector index -----------------------------------------------------------------------
    def build_index(
        self,
        backend: str = "faiss",
        path: str | Path | None = None,
        *,
        kind: str = "flat",
        collection: str = "tdakit",
        rebuild: bool = False,
        **options: Any,
    ) -> VectorIndex:
        """Write the training vectors into a vector index (or reopen a matching one).

        ``backend``: ``"exact"`` (in memory), ``"faiss"`` (``kind`` ``"flat"`` exact or
        ``"hnsw"`` approximate; saved to ``path`` when given) or ``"milvus"`` (``path`` is a
        Milvus Lite file ``*.db`` or a server URI; ``kind`` ``"flat"`` or ``"hnsw"``). An
        existing index at ``path`` is reused only if it was built from the same model, code,
        data and configuration, refused otherwise (``rebuild=True`` replaces it).
        """
        from tdakit.methods.indexing import build_index

        return build_index(
            self, backend, path, kind=kind, collection=collection, rebuild=rebuild, **options
        )

    def top_k(
        self,
        queries: Any,
        k: int = 10,
        *,
        opponents: bool = False,
        index: VectorIndex | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`AttributionMethod.top_k`; with ``index`` (from :meth:`build_index`) the
        search runs in the vector index instead of scanning the training features."""
        if index is None:
            return super().top_k(queries, k, opponents=opponents)
        from tdakit.methods.indexing import index_top_k

        return index_top_k(self, index, queries, k, opponents)
