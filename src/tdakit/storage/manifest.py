"""The feature store's manifest: what the store holds (shape, dtype, chunking, meta), written
once, validated on every open."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from tdakit.errors import StoreError, require
from tdakit.storage.fileio import TMP_RE, canonical_json

FORMAT_VERSION = 1
FORMAT = "tdakit.feature_store"
MANIFEST = "manifest.json"
DTYPES = ("float16", "float32", "float64")
INT_KEYS = ("n_rows", "dim", "chunk_rows")
HEADER_KEYS = (*INT_KEYS, "dtype")
CHUNK_RE = re.compile(r"^chunk_\d{6,}\.(npy|json)$")


def diff(cached: Any, requested: Any, prefix: str) -> list[str]:
    if isinstance(cached, dict) and isinstance(requested, dict):
        keys = sorted(set(cached) | set(requested), key=str)
        return [
            d
            for k in keys
            for d in diff(cached.get(k, "<absent>"), requested.get(k, "<absent>"), f"{prefix}.{k}")
        ]
    a, b = (repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..." for v in (cached, requested))
    return [] if cached == requested else [f"{prefix}: cached {a}, requested {b}"]


def clear_dir(directory: Path) -> None:
    """Remove the store's files (records first, manifest last); then the dir if empty."""
    if not directory.is_dir():
        return
    names = sorted((p for p in directory.iterdir() if p.is_file()), key=lambda p: p.suffix)
    ours = [p for p in names if CHUNK_RE.match(p.name) or TMP_RE.match(p.name)]
    for p in [*ours, directory / MANIFEST]:  # .json records sort before .npy
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()  # only succeeds when nothing but our files were there


def build_manifest(
    n_rows: int, dim: int, dtype: str, chunk_rows: int, meta: dict[str, Any] | None
) -> dict[str, Any]:
    """The manifest of a store, validated (raises naming the bad argument)."""
    for name, v in zip(INT_KEYS, (n_rows, dim, chunk_rows), strict=True):
        require(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0,
            f"FeatureStore.open: {name} must be a positive integer, got {v!r}",
        )
    require(dtype in DTYPES, f"FeatureStore.open: dtype must be one of {DTYPES}, got {dtype!r}")
    meta = {} if meta is None else meta
    require(isinstance(meta, dict), f"FeatureStore.open: meta must be a dict, got {type(meta)}")
    try:
        meta = json.loads(canonical_json(meta))
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"FeatureStore.open: meta must be JSON-serialisable (no NaN): {exc}; "
            "store fingerprints and config values as strings or numbers"
        ) from exc
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "n_rows": int(n_rows),
        "dim": int(dim),
        "dtype": dtype,
        "chunk_rows": int(chunk_rows),
        "meta": meta,
    }
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    where = directory / MANIFEST
    fix = f"delete the directory or call FeatureStore.clear({str(directory)!r}) and recompute"
    try:
        m = json.loads(where.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"corrupted feature store manifest {where}: {exc}; {fix}") from exc
    ok = isinstance(m, dict) and m.get("format") == FORMAT and m.get("dtype") in DTYPES
    ok = ok and all(isinstance(m.get(k), int) and m[k] > 0 for k in INT_KEYS)
    require(
        ok and isinstance(m.get("meta"), dict),
        f"corrupted or foreign feature store manifest {where}; {fix}",
        StoreError,
    )
    require(
        m.get("version") == FORMAT_VERSION,
        f"feature store {directory} has format version {m.get('version')!r} but this "
        f"tdakit reads version {FORMAT_VERSION}; upgrade tdakit or recompute elsewhere",
        StoreError,
    )
    return m


def check_same(old: dict[str, Any], manifest: dict[str, Any], directory: Path) -> None:
    """Refuse to reopen a store created for another configuration."""
    diffs = [d for k in (*HEADER_KEYS, "meta") for d in diff(old[k], manifest[k], k)]
    require(
        not diffs,
        f"feature store {directory} was created for a different configuration; "
        f"differing keys: {'; '.join(diffs)}. Use a different cache directory (e.g. "
        "named with tdakit.storage.cache_key(...)) or delete it with "
        f"FeatureStore.clear({str(directory)!r})",
        StoreError,
    )
