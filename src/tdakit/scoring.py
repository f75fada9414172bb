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
        idx = torch.arange(start, stop, device=s.device).expand_as(s)
        if best_val is not None:
            s = torch.cat([best_val, s], dim=1)
            idx = torch.cat([best_idx, idx], dim=1)
        best_val, best_idx = _stable_top(s, idx, min(k, s.shape[1]), largest)
    assert best_val is not None and best_idx is not None
    return best_idx, best_val


def _stable_top(
    s: torch.Tensor, idx: torch.Tensor, k: int, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    # Sort by index first, then a stable sort by value: ties keep the lower index first.
    order = idx.argsort(dim=1, stable=True)
    s, idx = s.gather(1, order), idx.gather(1, order)
    order = s.argsort(dim=1, descending=largest, stable=True)[:, :k]
    return s.gather(1, order), idx.gather(1, order)
