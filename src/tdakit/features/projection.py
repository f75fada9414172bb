"""Seeded random projections that preserve inner products (Johnson-Lindenstrauss).

Each parameter block gets its own sketch, derived from ``(seed, block name)``, and the
projected blocks are summed, so a full ``P``-dimensional gradient is never formed and
the same seed always gives the same projection on any device.

- ``gaussian``: entries ``N(0, 1/k)``;
- ``rademacher``: entries ``+-1/sqrt(k)``;
- ``sjlt``: sparse sign sketch; every coordinate goes to ``s`` rows (one in each of ``s``
  equal segments of the ``k`` outputs) with random signs, scaled ``1/sqrt(s)``.
"""

from __future__ import annotations

import math
import warnings
import zlib
from typing import Literal

import torch

from tdakit.errors import require

Kind = Literal["gaussian", "rademacher", "sjlt"]
KINDS = ("gaussian", "rademacher", "sjlt")


class Projector:
    """Project per-parameter gradient blocks ``{name: [B, *shape]}`` to ``[B, dim]``.

    Dense sketches are generated in row chunks of at most ``chunk_rows`` coordinates and
    cached up to ``cache_bytes``; beyond that they are regenerated on every call.
    """

    def __init__(
        self,
        dim: int,
        kind: Kind = "rademacher",
        seed: int = 0,
        sparsity: int = 4,
        chunk_rows: int = 65536,
        cache_bytes: int = 512 * 2**20,
    ) -> None:
        require(
            isinstance(dim, int) and dim > 0, f"Projection dim must be a positive int, got {dim!r}."
        )
        require(kind in KINDS, f"Unknown projection kind {kind!r}; use one of {KINDS}.")
        require(
            kind != "sjlt" or (1 <= sparsity <= dim and dim % sparsity == 0),
            f"sjlt needs 1 <= sparsity <= dim with dim divisible by sparsity "
            f"(got sparsity={sparsity}, dim={dim}).",
        )
        self.dim, self.kind, self.seed, self.sparsity = dim, kind, int(seed), sparsity
        self.chunk_rows, self.cache_bytes = chunk_rows, cache_bytes
        self._cache: dict[tuple[str, int, torch.device, torch.dtype], object] = {}
        self._cached_bytes = 0

    @property
    def config(self) -> dict:
        """JSON-able description (part of every feature-cache key)."""
        return {
            "dim": self.dim,
            "kind": self.kind,
            "seed": self.seed,
            "sparsity": self.sparsity,
            "chunk_rows": self.chunk_rows,
        }

    def project(self, blocks: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum over blocks of ``block @ sketch(block)``: ``[B, dim]``."""
        out = None
        for name, g in blocks.items():
            g = g.reshape(len(g), -1)
            for c0 in range(0, g.shape[1], self.chunk_rows):
                part = g[:, c0 : c0 + self.chunk_rows]
                y = self._apply(name, c0, part)
                out = y if out is None else out + y
        assert out is not None
        return out

    def _apply(self, name: str, c0: int, part: torch.Tensor) -> torch.Tensor:
        sketch = self._sketch(name, c0, part.shape[1], part.device, part.dtype)
        if self.kind != "sjlt":
            return part @ sketch
        return (sketch @ part.T).T  # sparse CSR [dim, n] @ dense [n, B]

    def _sketch(self, name: str, c0: int, n: int, device: torch.device, dtype: torch.dtype):
        key = (name, c0, device, dtype)
        if key in self._cache:
            return self._cache[key]
        gen = torch.Generator(device="cpu").manual_seed(
            (self.seed * 1_000_003 + zlib.crc32(name.encode()) * 7919 + c0) % (2**63 - 1)
        )
        if self.kind == "gaussian":
            sketch = torch.randn(n, self.dim, generator=gen, dtype=dtype)
            sketch = sketch.div_(math.sqrt(self.dim)).to(device)
            size = sketch.numel() * sketch.element_size()
        elif self.kind == "rademacher":
            # Drawn straight in the target dtype: no int64/float64 temporaries.
            sketch = torch.empty(n, self.dim, dtype=dtype).bernoulli_(0.5, generator=gen)
            sketch = sketch.mul_(2 / math.sqrt(self.dim)).sub_(1 / math.sqrt(self.dim)).to(device)
            size = sketch.numel() * sketch.element_size()
        else:
            sketch = self._sparse_sketch(gen, n, device, dtype)
            size = sketch.values().numel() * (8 + sketch.values().element_size())
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[key] = sketch
            self._cached_bytes += size
        return sketch

    def _sparse_sketch(
        self, gen: torch.Generator, n: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """CSR ``[dim, n]``: column c has ``+-1/sqrt(s)`` in one row of each of ``s`` segments."""
        seg = self.dim // self.sparsity
        offsets = torch.arange(self.sparsity).view(-1, 1) * seg
        rows = torch.randint(0, seg, (self.sparsity, n), generator=gen) + offsets
        signs = 2 * torch.randint(0, 2, (self.sparsity, n), generator=gen) - 1
        cols = torch.arange(n).expand(self.sparsity, n)
        values = signs.to(torch.float64) / math.sqrt(self.sparsity)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR is in beta"
            coo = torch.sparse_coo_tensor(
                torch.stack([rows.reshape(-1), cols.reshape(-1)]), values.reshape(-1), (self.dim, n)
            )
            return coo.coalesce().to_sparse_csr().to(device=device, dtype=dtype)


def make_projector(
    projection: Projector | int | dict | None, kind: Kind = "rademacher", seed: int = 0
) -> Projector | None:
    """Accept a ready projector, a target dimension, its config dict, or ``None``."""
    if projection is None or isinstance(projection, Projector):
        return projection
    if isinstance(projection, dict):
        require(
            projection.get("kind") in KINDS,
            f"Cannot rebuild a projection from {projection}; pass the Projector itself.",
        )
        keys = ("dim", "kind", "seed", "sparsity", "chunk_rows")
        return Projector(**{k: v for k, v in projection.items() if k in keys})
    require(
        isinstance(projection, int) and not isinstance(projection, bool) and projection > 0,
        f"projection must be a positive int (the dimension k), a Projector or None, got "
        f"{projection!r}.",
    )
    return Projector(int(projection), kind=kind, seed=seed)
