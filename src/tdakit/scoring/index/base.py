"""The vector-index interface: maximum-inner-product search over training vectors.

An index stores ``(id, vector)`` pairs and answers ``search(queries, k)`` with the ``k``
largest inner products per query (ids ``int64``, scores ``float32``). It carries ``meta``
(the model, code, data and feature fingerprints it was built from) and is reopened only
when they match (:func:`check_meta`): a changed model is refused or rebuilt, never reused.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from tdakit.errors import DataError, StoreError, require

BACKENDS = ("exact", "faiss", "milvus")


class VectorIndex:
    """Base class; see the module docstring."""

    backend: ClassVar[str] = ""
    exact: ClassVar[bool] = True

    def __init__(self, dim: int, meta: dict[str, Any] | None = None) -> None:
        require(isinstance(dim, int) and dim > 0, f"dim must be a positive int, got {dim!r}.")
        self.dim, self.meta = dim, dict(meta or {})

    def __len__(self) -> int:
        raise NotImplementedError

    def add(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        raise NotImplementedError

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _check_add(self, ids: torch.Tensor, vectors: torch.Tensor) -> tuple:
        ids = torch.as_tensor(ids).reshape(-1).long().cpu()
        require(
            vectors.ndim == 2 and vectors.shape == (len(ids), self.dim),
            f"add needs vectors [{len(ids)}, {self.dim}] for {len(ids)} ids, got "
            f"{tuple(vectors.shape)}.",
            DataError,
        )
        v = vectors.detach().to("cpu", torch.float32).contiguous()
        require(bool(torch.isfinite(v).all()), "Index vectors contain NaN or inf.", DataError)
        return ids, v

    def _check_search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        require(
            isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= len(self),
            f"k must be an int between 1 and the index size ({len(self)}), got {k!r}.",
        )
        require(
            queries.ndim == 2 and queries.shape[1] == self.dim,
            f"search needs queries [n, {self.dim}], got {tuple(queries.shape)}.",
            DataError,
        )
        return queries.detach().to("cpu", torch.float32).contiguous()


class ExactIndex(VectorIndex):
    """Brute-force inner products in torch, in memory (the reference for the others)."""

    backend = "exact"

    def __init__(self, dim: int, meta: dict[str, Any] | None = None) -> None:
        super().__init__(dim, meta)
        self.ids = torch.zeros(0, dtype=torch.long)
        self.vectors = torch.zeros(0, dim)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        ids, v = self._check_add(ids, vectors)
        self.ids, self.vectors = torch.cat([self.ids, ids]), torch.cat([self.vectors, v])

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = self._check_search(queries, k)
        from tdakit.scoring.blocks import TopK

        top = TopK(k)
        top.update(0, q @ self.vectors.T)
        pos, val = top.result()
        return self.ids[pos], val


def check_meta(stored: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Refuse an index built for another model, code, data or configuration."""
    diffs = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
    require(
        not diffs,
        f"The vector index at {where} was built for a different {', '.join(diffs)} "
        f"(stored {[stored.get(k) for k in diffs]}, now {[expected.get(k) for k in diffs]}); "
        "rebuild it with rebuild=True or use another path.",
        StoreError,
    )
