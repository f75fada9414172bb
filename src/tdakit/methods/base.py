"""The one contract every attribution method follows.

``fit(train)`` -> ``scores(queries)`` ``[n_query, n_train]`` / ``top_k(queries, k)`` /
``self_scores()`` ``[n_train]`` / ``iter_blocks(queries)``; positive scores mean the
training example helped. Data are read as a :class:`~tdakit.data.sources.Source`: batch by
batch, never copied; queries are processed ``query_block`` at a time.

Configuration lives in the constructor (stored under the argument names, as in
scikit-learn); ``fit`` does the work and sets attributes ending in ``_``.
``get_params`` / ``to_config`` / ``clone`` rebuild a method from its configuration.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch

from tdakit.data.sources import Batch, DataLike, Source, as_source
from tdakit.errors import ConfigError, NotFittedError, require
from tdakit.scoring import ScoreBlock, TopK, check_k
from tdakit.task import Task

TrainBlocks = Iterator[tuple[int, int, torch.Tensor]]


def _positive_int(value: Any, name: str) -> int:
    require(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"{name} must be a positive int, got {value!r}.",
    )
    return value


def plain(value: Any) -> Any:
    """A configuration value as plain data (numbers, strings, lists, dicts)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "to_config"):
        return value.to_config()
    if hasattr(value, "config") and not callable(value.config):
        return value.config
    raise ConfigError(f"{type(value).__name__} is not plain data and cannot go into a config.")


class AttributionMethod(ABC):
    """Base class; subclasses implement :meth:`_fit`, :meth:`_query_state` and
    :meth:`_train_scores` (see :class:`FeatureMethod` for the usual composition).

    Args:
        task: the model and its losses.
        batch_size: examples per featurisation batch (memory of per-example gradients).
        block_size: training examples per score block.
        query_block: queries scored together (their features are held at once).
        progress: show progress bars.
    """

    name: ClassVar[str] = ""  # registry name
    # Constructor arguments that are objects, not configuration: not in to_config(),
    # passed again to from_config (checkpoints, training recipes).
    runtime_params: ClassVar[tuple[str, ...]] = ()
    # How per-model scores combine into the score: "sum" (TracIn) or "mean" (TRAK).
    ensemble_reduction: ClassVar[str] = "sum"
    # Whether the method's own randomness is part of a posterior sample (its seed is
    # varied per sample in reliability studies): the random baseline.
    reseed_per_sample: ClassVar[bool] = False

    def __init__(
        self,
        task: Task | None,
        *,
        batch_size: int = 128,
        block_size: int = 4096,
        query_block: int = 1024,
        progress: bool = False,
    ) -> None:
        require(
            task is None or isinstance(task, Task),
            f"{type(self).__name__} needs a tdakit.Task, got {type(task).__name__}; "
            "wrap your model with tda.Task(model, loss=...).",
        )
        self.task = task
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.block_size = _positive_int(block_size, "block_size")
        self.query_block = _positive_int(query_block, "query_block")
        require(isinstance(progress, bool), f"progress must be True or False, got {progress!r}.")
        self.progress = progress
        self.train_: Source | None = None

    # --- configuration ------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (except ``task``) as stored on the method."""
        names: list[str] = []
        for cls in type(self).__mro__:
            init = cls.__dict__.get("__init__")
            if init is None:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.name in ("self", "task") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    continue
                if p.name not in names:
                    names.append(p.name)
        return {n: getattr(self, n) for n in names}

    def to_config(self) -> dict[str, Any]:
        """``{"method": name, **options}`` as plain data (objects such as checkpoints are
        left out; pass them again to :func:`tdakit.methods.from_config`)."""
        params = {k: v for k, v in self.get_params().items() if k not in self.runtime_params}
        return {"method": self.name, **{k: plain(v) for k, v in params.items()}}

    def clone(self, task: Task | None = None, **overrides: Any) -> AttributionMethod:
        """An unfitted copy with the same configuration (the same option objects, e.g. a
        solver with an explicit projection), on ``task`` (default: the same task)."""
        params = self.get_params()
        unknown = sorted(set(overrides) - set(params))
        require(not unknown, f"Unknown option(s) {unknown} for {type(self).__name__}.")
        return type(self)(task or self.task, **{**params, **overrides})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_config()})"

    # --- the contract ------------------------------------------------------------------
    def fit(self, train: DataLike) -> AttributionMethod:
        """Fit on the training set (a tuple ``(X, y)``, a Dataset, a DataLoader)."""
        source = as_source(train, "train")
        self.train_ = source
        self._fit(source)
        return self

    @property
    def n_train(self) -> int:
        return len(self._fitted_source())

    def iter_blocks(self, queries: DataLike, *, per_model: bool = False) -> Iterator[ScoreBlock]:
        """Score blocks in order: query blocks, each over all training blocks.

        With ``per_model=True`` (ensembles: TracIn, TRAK) the values are ``[M, q, t]``, one
        slice per model, combining by ``ensemble_reduction`` into the scores.
        """
        for q0, q1, state in self._query_states(queries):
            for t0, t1, S in self._train_scores(state, per_model):
                yield ScoreBlock(q0, q1, t0, t1, S)

    def scores(self, queries: DataLike) -> torch.Tensor:
        """Scores ``[n_query, n_train]``; positive = the train example helped the query."""
        n_query = len(as_source(queries, "query"))
        out = None
        for b in self.iter_blocks(queries):
            if out is None:
                out = torch.empty(
                    n_query, self.n_train, dtype=b.values.dtype, device=b.values.device
                )
            out[b.q0 : b.q1, b.t0 : b.t1] = b.values
        assert out is not None
        return out

    def top_k(
        self, queries: DataLike, k: int = 10, *, opponents: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices and scores ``[n_query, k]`` of the top proponents (or opponents), best
        first; streamed over score blocks (the dense matrix is never built)."""
        check_k(k, self.n_train)
        idx, val = [], []
        for _, _, state in self._query_states(queries):
            top = TopK(k, largest=not opponents)
            for t0, _, S in self._train_scores(state, False):
                top.update(t0, S)
            i, v = top.result()
            idx.append(i)
            val.append(v)
        return torch.cat(idx), torch.cat(val)

    def self_scores(self) -> torch.Tensor:
        """``S[i, i]``: each training example's score with itself as the query ``[n_train]``."""
        source = self._fitted_source()
        out = []
        for group in _grouped(source.batches(self.task, self.batch_size), self.query_block):
            start, stop = group[0].start, group[-1].stop
            S = self._train_range(self._query_state(group), start, stop)
            out.append(S)
        return torch.cat(out)

    # --- for subclasses -----------------------------------------------------------------
    @abstractmethod
    def _fit(self, source: Source) -> None: ...

    @abstractmethod
    def _query_state(self, batches: list[Batch]) -> Any:
        """Whatever the score blocks need about a group of query batches."""

    @abstractmethod
    def _train_scores(self, state: Any, per_model: bool) -> TrainBlocks:
        """``(t0, t1, scores [n_q, t1 - t0] or [M, n_q, t1 - t0])`` over all training blocks."""

    @abstractmethod
    def _train_range(self, state: Any, start: int, stop: int) -> torch.Tensor:
        """Diagonal scores of queries that are training examples ``[start, stop)``."""

    def _query_states(self, queries: DataLike) -> Iterator[tuple[int, int, Any]]:
        self._fitted_source()
        source = as_source(queries, "query")
        for group in _grouped(source.batches(self.task, self.batch_size), self.query_block):
            yield group[0].start, group[-1].stop, self._query_state(group)

    def _fitted_source(self) -> Source:
        if self.train_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call .fit(train) first.")
        return self.train_


def _grouped(batches: Iterable[Batch], rows: int) -> Iterator[list[Batch]]:
    """Consecutive batches grouped into lists of at least ``rows`` examples (last: fewer)."""
    group: list[Batch] = []
    for b in batches:
        group.append(b)
        if group[-1].stop - group[0].start >= rows:
            yield group
            group = []
    if group:
        yield group
