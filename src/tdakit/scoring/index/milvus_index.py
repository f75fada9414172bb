"""Milvus as the persistent vector database: Milvus Lite (embedded, one local ``.db`` file,
the default) or a Milvus server or cluster by URI (``http://host:19530``), same code.

The vectors live in a collection with an ``int64`` primary key and a float vector field;
the fingerprints live in a companion ``<collection>_meta`` collection, written after the
vectors are flushed, so an index whose build was interrupted is never seen as complete.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from tdakit.errors import ConfigError, StoreError, require
from tdakit.scoring.index.base import VectorIndex, check_meta

INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "AUTOINDEX")
_BATCH = 2000


def import_milvus():
    try:
        import pymilvus
    except ImportError as err:
        raise ConfigError(
            "The Milvus index needs pymilvus (and milvus-lite for a local file): pip install "
            '"tdakit[index]", or use backend="faiss".'
        ) from err
    return pymilvus


class MilvusIndex(VectorIndex):
    """Inner-product search in a Milvus collection.

    Args:
        uri: a local file (``"index.db"``, Milvus Lite) or a server URI.
        collection: collection name (letters, digits, underscores).
        dim: vector dimension (needed to create; read back when opening).
        index_type: ``"FLAT"`` (exact) or an approximate Milvus index (``"HNSW"``, ...).
        token: credentials for a server, if it needs them.
        rebuild: drop an existing collection of that name first.
    """

    backend = "milvus"

    def __init__(
        self,
        uri: str,
        collection: str,
        dim: int,
        *,
        index_type: str = "FLAT",
        meta: dict[str, Any] | None = None,
        token: str | None = None,
        rebuild: bool = False,
    ) -> None:
        super().__init__(dim, meta)
        require(index_type in INDEX_TYPES, f"index_type must be one of {INDEX_TYPES}.")
        require(
            collection.replace("_", "").isalnum() and collection[:1].isalpha(),
            f"Milvus collection names use letters, digits and _, got {collection!r}.",
        )
        self.uri, self.collection, self.index_type = str(uri), collection, index_type
        self.exact = index_type == "FLAT"
        self.meta.update({"index_type": index_type, "dim": dim})
        self.client = _client(self.uri, token)
        if rebuild:
            for name in (collection, f"{collection}_meta"):
                if self.client.has_collection(name):
                    self.client.drop_collection(name)
        require(
            not self.client.has_collection(collection),
            f"Milvus collection {collection!r} already exists at {uri}; open it with "
            "MilvusIndex.open(...) or pass rebuild=True.",
            StoreError,
        )
        self._create()
        self._count = 0

    def _create(self) -> None:
        pm = import_milvus()
        schema = pm.MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", pm.DataType.INT64, is_primary=True)
        schema.add_field("vector", pm.DataType.FLOAT_VECTOR, dim=self.dim)
        params = self.client.prepare_index_params()
        params.add_index("vector", index_type=self.index_type, metric_type="IP")
        self.client.create_collection(self.collection, schema=schema, index_params=params)

    def __len__(self) -> int:
        return self._count

    def add(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        ids, v = self._check_add(ids, vectors)
        rows = v.tolist()
        for a in range(0, len(ids), _BATCH):
            batch = [
                {"id": int(i), "vector": r}
                for i, r in zip(ids[a : a + _BATCH].tolist(), rows[a : a + _BATCH], strict=True)
            ]
            self.client.insert(self.collection, batch)
        self._count += len(ids)

    def commit(self) -> MilvusIndex:
        """Flush the vectors, then record the fingerprints: the index is now complete."""
        pm = import_milvus()
        self.client.flush(self.collection)
        meta_name = f"{self.collection}_meta"
        schema = pm.MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", pm.DataType.INT64, is_primary=True)
        schema.add_field("meta", pm.DataType.VARCHAR, max_length=65535)
        schema.add_field("vector", pm.DataType.FLOAT_VECTOR, dim=2)
        params = self.client.prepare_index_params()
        params.add_index("vector", index_type="FLAT", metric_type="IP")
        if self.client.has_collection(meta_name):
            self.client.drop_collection(meta_name)
        self.client.create_collection(meta_name, schema=schema, index_params=params)
        text = json.dumps({**self.meta, "count": self._count}, sort_keys=True)
        self.client.insert(meta_name, [{"id": 0, "meta": text, "vector": [0.0, 0.0]}])
        self.client.flush(meta_name)
        return self

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = self._check_search(queries, k)
        hits = self.client.search(
            self.collection,
            data=q.tolist(),
            limit=k,
            search_params={"metric_type": "IP"},
            output_fields=[],
        )
        ids = torch.tensor([[h["id"] for h in row] for row in hits], dtype=torch.long)
        scores = torch.tensor([[h["distance"] for h in row] for row in hits], dtype=torch.float32)
        require(ids.shape == (len(q), k), "Milvus returned fewer hits than requested.", StoreError)
        return ids, scores

    @classmethod
    def open(
        cls,
        uri: str,
        collection: str,
        expected: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> MilvusIndex:
        """Reopen a committed index; with ``expected`` meta, refuse one built for other data."""
        client = _client(str(uri), token)
        meta_name = f"{collection}_meta"
        if not (client.has_collection(collection) and client.has_collection(meta_name)):
            raise StoreError(
                f"No complete Milvus index {collection!r} at {uri} (missing or interrupted "
                "build); build it again."
            )
        client.load_collection(meta_name)
        rows = client.query(meta_name, filter="id == 0", output_fields=["meta"])
        require(len(rows) == 1, f"The Milvus index {collection!r} has no metadata.", StoreError)
        meta = json.loads(rows[0]["meta"])
        count = meta.pop("count")
        if expected is not None:
            check_meta(
                meta,
                {**expected, "index_type": meta["index_type"], "dim": meta["dim"]},
                f"{uri}:{collection}",
            )
        client.load_collection(collection)
        out = cls.__new__(cls)
        VectorIndex.__init__(out, int(meta["dim"]), meta)
        out.uri, out.collection, out.index_type = str(uri), collection, meta["index_type"]
        out.exact, out.client, out._count = out.index_type == "FLAT", client, int(count)
        return out

    def close(self) -> None:
        self.client.close()


def _client(uri: str, token: str | None):
    pm = import_milvus()
    try:
        return pm.MilvusClient(uri, token=token) if token else pm.MilvusClient(uri)
    except Exception as err:  # pymilvus raises its own exception types
        raise StoreError(f"Cannot open Milvus at {uri!r}: {err}") from err
