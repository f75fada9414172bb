"""Crash-safe files and the feature store (chunked, memory-mapped, checksummed arrays)."""

from tdakit.storage.fileio import atomic_write, cache_key
from tdakit.storage.store import FeatureStore

__all__ = ["FeatureStore", "atomic_write", "cache_key"]
