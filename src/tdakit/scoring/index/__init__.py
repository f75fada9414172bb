"""Vector indexes for maximum-inner-product search: exact (torch), FAISS, Milvus."""

from tdakit.scoring.index.base import BACKENDS, ExactIndex, VectorIndex, check_meta
from tdakit.scoring.index.faiss_index import FaissIndex
from tdakit.scoring.index.milvus_index import MilvusIndex

__all__ = ["BACKENDS", "ExactIndex", "FaissIndex", "MilvusIndex", "VectorIndex", "check_meta"]
