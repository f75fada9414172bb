"""Query x train products in blocks, and a streaming top-k that never holds the full matrix."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from tdakit.errors import require

# A block scorer returns the scores of all queries against train rows [start, stop).
BlockScorer = Callable[[int, int], torch.Tensor]


def train_blocks(n_train: int, block: int) -> Iterator[tuple[int, int]]:
    require(block > 0, f"block_size must be positive, got {block}.")
    for start in range(0, n_train, block):
        yield start, min(start + block, n_train)


def dense_scores(score_block: BlockScorer, n_query: int, n_train: int, block: int) -> torch.Tensor:
    """Assemble ``[n_query, n_train]`` from blocks of train columns."""
    out = None
    for start, stop in train_blocks(n_train, block):
        s = score_block(start, stop)
        if out is None:
            out = torch.empty(n_query, n_train, dtype=s.dtype, device=s.device)
        out[:, start:stop] = s
    assert out is not None
    return out


def streaming_top_k(
    score_block: BlockScorer, n_train: int, k: int, block: int, largest: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` train indices and scores per query, best first, merging block by block.

    Ties are broken by the lower train index, so the result equals a stable arg-sort.
    """
    require(
        isinstance(k, int) and 1 <= k <= n_train,
        f"k must be an int between 1 and the number of training examples ({n_train}), got {k!r}.",
    )
    best_val = best_idx = None
    for start, stop in train_blocks(n_train, block):
        s = score_block(start, stop)
        val, idx = _block_top(s if largest else -s, min(k, stop - start))
        val, idx = val if largest else -val, idx + start
        if best_val is not None:
            val, idx = torch.cat([best_val, val], 1), torch.cat([best_idx, idx], 1)
        order = val.argsort(dim=1, descending=largest, stable=True)[:, :k]
        best_val, best_idx = val.gather(1, order), idx.gather(1, order)
    assert best_val is not None and best_idx is not None
    return best_idx, best_val


def _block_top(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of each row, listed in column order; among equal values at the
    cut-off the lowest columns win (``torch.topk`` alone does not promise that)."""
    kth = s.topk(k, dim=1).values[:, -1:]
    above = s > kth
    ties = (s == kth) & ((s == kth).cumsum(1) <= k - above.sum(1, keepdim=True))
    cols = (above | ties).nonzero()[:, 1].view(len(s), k)
    return s.gather(1, cols), cols
