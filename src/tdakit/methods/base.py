"""The one contract every attribution method follows.

``fit(train)`` -> ``scores(queries)`` ``[n_query, n_train]`` / ``top_k(queries, k)`` /
``self_scores()`` ``[n_train]``; positive scores mean the training example helped.

Most methods are *feature methods*: a score is ``scale * <prepare(q), t_i>`` where
``t_i`` are train features fitted once (optionally kept in a feature store) and
``prepare`` applies the method's preconditioner to query features.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from tdakit.errors import TdakitError, require
from tdakit.features.projection import Projector
from tdakit.inputs import DataLike, as_tensors
from tdakit.scoring import dense_scores, streaming_top_k, train_blocks
from tdakit.task import Task


class AttributionMethod(ABC):
    """Base class: subclasses implement :meth:`_fit` and :meth:`_score_fn`."""

    name = "method"

    def __init__(
        self,
        task: Task | None,
        *,
        batch_size: int = 128,
        block_size: int = 4096,
        progress: bool = False,
    ) -> None:
        require(
            task is None or isinstance(task, Task),
            f"{type(self).__name__} needs a tdakit.Task, got {type(task).__name__}; "
            "wrap your model with tda.Task(model, loss=...).",
        )
        require(
            batch_size > 0 and block_size > 0,
            f"batch_size and block_size must be positive (got {batch_size}, {block_size}).",
        )
        self.task, self.batch_size, self.block_size, self.progress = (
            task,
            batch_size,
            block_size,
            progress,
        )
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- the contract ------------------------------------------------------------------
    def fit(self, train: DataLike) -> AttributionMethod:
        """Fit on the training set (a tuple ``(X, y)``, a Dataset or a DataLoader)."""
        X, y = as_tensors(train, "train")
        self._train = (X, y)
        self._fit(X, y)
        return self

    def scores(self, queries: DataLike) -> torch.Tensor:
        """Scores ``[n_query, n_train]``; positive = the train example helped the query."""
        fn, n_query = self._score_fn(*self._queries(queries))
        return dense_scores(fn, n_query, self.n_train, self.block_size)

    def top_k(
        self, queries: DataLike, k: int = 10, *, opponents: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices and scores ``[n_query, k]`` of the top proponents (or opponents), best first.

        Streams over blocks of training examples; the dense matrix is never built.
        """
        fn, _ = self._score_fn(*self._queries(queries))
        return streaming_top_k(fn, self.n_train, k, self.block_size, largest=not opponents)

    def self_scores(self) -> torch.Tensor:
        """``S[i, i]``: each training example's score for itself as the query ``[n_train]``."""
        X, y = self._fitted_train()
        out = []
        for start in range(0, len(X), self.block_size):
            stop = min(start + self.block_size, len(X))
            fn, _ = self._score_fn(X[start:stop], y[start:stop])
            out.append(torch.diagonal(fn(start, stop)))
        return torch.cat(out)

    # --- for subclasses -----------------------------------------------------------------
    @abstractmethod
    def _fit(self, X: torch.Tensor, y: torch.Tensor) -> None: ...

    @abstractmethod
    def _score_fn(self, Xq: torch.Tensor, yq: torch.Tensor):
        """Return ``(score_block(start, stop) -> [n_query, stop-start], n_query)``."""

    @property
    def n_train(self) -> int:
        return len(self._fitted_train()[0])

    def _fitted_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._train is None:
            raise TdakitError(f"{type(self).__name__} is not fitted: call .fit(train) first.")
        return self._train

    def _queries(self, queries: DataLike) -> tuple[torch.Tensor, torch.Tensor]:
        X, y = as_tensors(queries, "query")
        Xt, _ = self._fitted_train()
        require(
            X.shape[1:] == Xt.shape[1:],
            f"Query inputs have shape {tuple(X.shape[1:])} per example but the training "
            f"inputs have {tuple(Xt.shape[1:])}; they must match.",
        )
        return X, y


class FeatureMethod(AttributionMethod):
    """Scores ``scale * <prepare(query features), train features>`` in blocks.

    Subclasses implement :meth:`_features`; optionally :meth:`_prepare` (preconditioner
    applied to query features), :meth:`_finish_train` and :attr:`scale`.
    """

    scale: float = 1.0

    def __init__(
        self,
        task: Task | None,
        *,
        projection: Projector | None = None,
        cache_dir: str | Path | None = None,
        **kw,
    ) -> None:
        super().__init__(task, **kw)
        self.projector = projection
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.train_features: torch.Tensor | None = None

    @abstractmethod
    def _features(self, X: torch.Tensor, y: torch.Tensor, objective: str) -> torch.Tensor:
        """Features ``[n, d]`` of examples as training points or as queries."""

    def _fit(self, X: torch.Tensor, y: torch.Tensor) -> None:
        self.train_features = self._finish_train(self._train_features(X, y))

    def _train_features(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cache_dir is None:
            return self._features(X, y, "train")
        from tdakit.features.cache import cached_features

        return cached_features(self, X, y)

    def _finish_train(self, T: torch.Tensor) -> torch.Tensor:
        return T

    def _prepare(self, Q: torch.Tensor) -> torch.Tensor:
        return Q

    def cache_config(self) -> dict:
        """What, besides model and data, determines the train features (cache key)."""
        return {
            "method": type(self).__name__,
            "projection": None if self.projector is None else self.projector.config,
        }

    def scores(self, queries: DataLike) -> torch.Tensor:
        # The result is dense anyway: one product beats assembling blocks.
        Q = self._query_side(*self._queries(queries))
        return self.scale * (Q @ self._fitted_features().T)

    def self_scores(self) -> torch.Tensor:
        X, y = self._fitted_train()
        T = self._fitted_features()
        out = [
            self.scale * (self._query_side(X[a:b], y[a:b]) * T[a:b]).sum(1)
            for a, b in train_blocks(len(X), self.block_size)
        ]
        return torch.cat(out)

    def _fitted_features(self) -> torch.Tensor:
        if self.train_features is None:
            raise TdakitError(f"{type(self).__name__} is not fitted: call .fit(train) first.")
        return self.train_features

    def _query_side(self, Xq: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
        T = self._fitted_features()
        return self._prepare(self._features(Xq, yq, "query")).to(T.dtype)

    def _score_fn(self, Xq: torch.Tensor, yq: torch.Tensor):
        T = self._fitted_features()
        Q = self._query_side(Xq, yq)
        scale = self.scale

        def block(start: int, stop: int) -> torch.Tensor:
            return scale * (Q @ T[start:stop].T)

        return block, len(Q)
