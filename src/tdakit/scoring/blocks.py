"""Score blocks and streaming reductions over them (top-k), so the full
``[n_query, n_train]`` matrix never has to exist."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch

from tdakit.errors import require


class ScoreBlock(NamedTuple):
    """Scores of queries ``[q0, q1)`` against training examples ``[t0, t1)``.

    ``values`` is ``[q1 - q0, t1 - t0]``, or ``[M, q1 - q0, t1 - t0]`` per ensemble member.
    """

    q0: int
    q1: int
    t0: int
    t1: int
    values: torch.Tensor


def row_blocks(n: int, block: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` ranges of at most ``block`` rows covering ``n``."""
    require(block > 0, f"block_size must be positive, got {block}.")
    for start in range(0, n, block):
        yield start, min(start + block, n)


def check_k(k: object, n_train: int) -> int:
    require(
        isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= n_train,
        f"k must be an int between 1 and the number of training examples ({n_train}), got {k!r}.",
    )
    return k  # type: ignore[return-value]


class TopK:
    """Running top-``k`` per row over column blocks, best first.

    Ties are broken by the lower column index, so the result equals a stable arg-sort.
    """

    def __init__(self, k: int, largest: bool = True) -> None:
        self.k, self.largest = k, largest
        self.values: torch.Tensor | None = None
        self.indices: torch.Tensor | None = None

    def update(self, start: int, scores: torch.Tensor) -> None:
        """Merge the block ``scores [n, m]`` whose first column is example ``start``."""
        k = min(self.k, scores.shape[1])
        s = scores if self.largest else -scores
        val, idx = _block_top(s, k)
        val, idx = (val if self.largest else -val), idx + start
        if self.values is not None:
            assert self.indices is not None
            val, idx = torch.cat([self.values, val], 1), torch.cat([self.indices, idx], 1)
        order = val.argsort(dim=1, descending=self.largest, stable=True)[:, : self.k]
        self.values, self.indices = val.gather(1, order), idx.gather(1, order)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.values is not None and self.indices is not None, "no block was merged"
        return self.indices, self.values


def _block_top(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of each row, listed in column order; among equal values at the
    cut-off the lowest columns win (``torch.topk`` alone does not promise that)."""
    kth = s.topk(k, dim=1).values[:, -1:]
    above = s > kth
    ties = (s == kth) & ((s == kth).cumsum(1) <= k - above.sum(1, keepdim=True))
    cols = (above | ties).nonzero()[:, 1].view(len(s), k)
    return s.gather(1, cols), cols
