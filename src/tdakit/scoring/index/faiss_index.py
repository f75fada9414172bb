"""FAISS in process: exact inner products (``IndexFlatIP``) or an approximate HNSW graph,
persisted as ``index.faiss`` plus ``meta.json`` (written atomically)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tdakit.errors import ConfigError, StoreError, require
from tdakit.scoring.index.base import VectorIndex, check_meta
from tdakit.storage.fileio import atomic_write

KINDS = ("flat", "hnsw")


def import_faiss():
    try:
        import faiss
    except ImportError as err:
        raise ConfigError(
            'The FAISS index needs faiss: pip install "tdakit[index]" (faiss-cpu), or use '
            'backend="exact".'
        ) from err
    return faiss


class FaissIndex(VectorIndex):
    """Inner-product search with FAISS.

    Args:
        dim: vector dimension.
        kind: ``"flat"`` (exact) or ``"hnsw"`` (approximate; ``m`` links per node,
            ``ef_search`` candidates per query: higher = better recall, slower).
        meta: fingerprints stored with the index.
    """

    backend = "faiss"

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        *,
        m: int = 32,
        ef_search: int = 128,
        ef_construction: int = 200,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(dim, meta)
        require(kind in KINDS, f"Unknown FAISS index kind {kind!r}; use one of {KINDS}.")
        faiss = import_faiss()
        self.kind, self.exact = kind, kind == "flat"
        if kind == "flat":
            inner = faiss.IndexFlatIP(dim)
        else:
            inner = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = ef_construction
            inner.hnsw.efSearch = ef_search
        self.index = faiss.IndexIDMap2(inner)
        self.meta.update({"kind": kind, "dim": dim})

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        ids, v = self._check_add(ids, vectors)
        self.index.add_with_ids(v.numpy(), ids.numpy())

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = self._check_search(queries, k)
        scores, ids = self.index.search(q.numpy(), k)
        return torch.from_numpy(ids).long(), torch.from_numpy(scores)

    def set_ef_search(self, ef: int) -> None:
        require(self.kind == "hnsw", "ef_search applies to kind='hnsw' only.")
        import_faiss().downcast_index(self.index.index).hnsw.efSearch = int(ef)

    # --- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        faiss = import_faiss()
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        blob = faiss.serialize_index(self.index).tobytes()
        atomic_write(d / "index.faiss", lambda f: f.write(blob))
        text = json.dumps({"format": "tdakit.faiss", "meta": self.meta}, sort_keys=True)
        atomic_write(d / "meta.json", lambda f: f.write(text.encode()))  # last: marks complete
        return d

    @classmethod
    def open(cls, path: str | Path, expected: dict[str, Any] | None = None) -> FaissIndex:
        """Reopen a saved index; with ``expected`` meta, refuse one built for other data."""
        faiss = import_faiss()
        d = Path(path)
        try:
            info = json.loads((d / "meta.json").read_text())
            blob = (d / "index.faiss").read_bytes()
        except (OSError, ValueError) as err:
            raise StoreError(f"No complete FAISS index at {d} ({err}); build it first.") from err
        require(
            info.get("format") == "tdakit.faiss", f"{d} is not a tdakit FAISS index.", StoreError
        )
        meta = info["meta"]
        if expected is not None:
            check_meta(meta, {**expected, "kind": meta["kind"], "dim": meta["dim"]}, str(d))
        import numpy as np

        try:
            index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        except RuntimeError as err:
            raise StoreError(
                f"The FAISS index file in {d} is corrupt ({err}); rebuild it."
            ) from err
        out = cls.__new__(cls)
        VectorIndex.__init__(out, int(meta["dim"]), meta)
        out.kind, out.exact, out.index = meta["kind"], meta["kind"] == "flat", index
        require(len(out) > 0, f"The FAISS index at {d} is empty; rebuild it.", StoreError)
        return out
