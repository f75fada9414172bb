"""A seeded random baseline: i.i.d. standard normal scores."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from tdakit.data.sources import Batch, DataLike, Source, as_source
from tdakit.methods.base import AttributionMethod
from tdakit.methods.registry import register
from tdakit.task import Task

_CHUNK = 1024  # columns drawn from one generator; fixed so scores never depend on block size


@register
class RandomBaseline(AttributionMethod):
    """``S[q, i] ~ N(0, 1)`` i.i.d.; the same seed gives the same scores.

    Score ``(q, i)`` depends only on ``seed``, the query's position ``q`` and ``i``, so
    ``scores``, ``top_k`` and ``iter_blocks`` agree; ``self_scores`` is an independent draw.
    The data are only counted (no model is run), so ``task`` may be ``None``.
    """

    name = "random"
    reseed_per_sample = True

    def __init__(self, task: Task | None = None, *, seed: int = 0, **kw) -> None:
        super().__init__(task, **kw)
        self.seed = int(seed)

    def _fit(self, source: Source) -> None:
        len(source)

    def _draw(self, stream: int, chunk: int) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(
            (self.seed * 1_000_003 + stream * 10_007 + chunk) % (2**63 - 1)
        )
        n = min(_CHUNK, self.n_train - chunk * _CHUNK)
        return torch.randn(n, generator=gen, dtype=torch.float64)

    def _row(self, stream: int, start: int, stop: int) -> torch.Tensor:
        first, last = start // _CHUNK, (stop - 1) // _CHUNK
        row = torch.cat([self._draw(stream, c) for c in range(first, last + 1)])
        return row[start - first * _CHUNK : stop - first * _CHUNK]

    def _query_states(self, queries: DataLike) -> Iterator[tuple[int, int, tuple[int, int]]]:
        self._fitted_source()
        n = len(as_source(queries, "query"))
        for q0 in range(0, n, self.query_block):
            q1 = min(q0 + self.query_block, n)
            yield q0, q1, (q0, q1)

    def _query_state(self, batches: list[Batch]) -> tuple[int, int]:
        return batches[0].start, batches[-1].stop

    def _train_scores(self, state: tuple[int, int], per_model: bool):
        q0, q1 = state
        for t0 in range(0, self.n_train, self.block_size):
            t1 = min(t0 + self.block_size, self.n_train)
            yield t0, t1, torch.stack([self._row(q + 1, t0, t1) for q in range(q0, q1)])

    def _train_range(self, state: tuple[int, int], start: int, stop: int) -> torch.Tensor:
        return self._row(0, start, stop)

    def self_scores(self) -> torch.Tensor:
        return self._row(0, 0, self.n_train)
