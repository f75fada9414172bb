"""A seeded random baseline: i.i.d. standard normal scores."""

from __future__ import annotations

import torch

from tdakit.methods.base import AttributionMethod
from tdakit.task import Task

_CHUNK = 1024  # columns drawn from one generator; fixed so scores never depend on block size


class RandomBaseline(AttributionMethod):
    """``S[q, i] ~ N(0, 1)`` i.i.d.; the same seed gives the same scores.

    Score ``(q, i)`` depends only on ``seed``, the query's position ``q`` and ``i``, so
    ``scores`` and ``top_k`` agree; ``self_scores`` is an independent seeded draw.
    """

    def __init__(self, task: Task | None = None, *, seed: int = 0, **kw) -> None:
        super().__init__(task, **kw)
        self.seed = int(seed)

    def _fit(self, X: torch.Tensor, y: torch.Tensor) -> None:
        pass

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

    def _score_fn(self, Xq: torch.Tensor, yq: torch.Tensor):
        def block(start: int, stop: int) -> torch.Tensor:
            return torch.stack([self._row(q + 1, start, stop) for q in range(len(Xq))])

        return block, len(Xq)

    def self_scores(self) -> torch.Tensor:
        return self._row(0, 0, self.n_train)
