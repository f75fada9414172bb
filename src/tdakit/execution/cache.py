"""The executor's result cache: one ``safetensors`` file per job, never a pickle.

A result is a tree of tensors, numbers, strings, ``None``, lists and string-keyed dicts
(what every tdakit job returns). Its tensors go into the safetensors body; the tree's
shape and the plain values go into the header's JSON metadata together with the job's
content key. Reading checks the header first: a file that is not a tdakit result, or that
belongs to another key, is refused before any tensor is read, and nothing is ever
unpickled, so a file planted in a shared cache directory cannot run code or stand in for
another job's result. Files are written through a temp file, fsync and rename.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from tdakit.errors import ConfigError, StoreError
from tdakit.storage.fileio import atomic_write, remove_stale_temps

FORMAT = "tdakit.result"
VERSION = "1"
SUFFIX = ".safetensors"


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}{SUFFIX}"


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu").contiguous()
        return {"__tensor__": name}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return {"__float__": repr(value)}  # keeps nan/inf and every bit
    if isinstance(value, (list, tuple)):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v, tensors) for k, v in value.items()}}
    raise ConfigError(
        f"A job result holds a {type(value).__name__}, which the safe result cache cannot "
        "store; return tensors, numbers, strings, lists and dicts with str keys."
    )


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__float__" in node:
            return float(node["__float__"])
        return {k: _decode(v, tensors) for k, v in node["__dict__"].items()}
    return node


def save_result(path: Path, key: str, name: str, result: Any) -> None:
    """Write ``result`` for job ``key`` atomically (temp file, fsync, rename)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(result, tensors)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "key": key,
        "name": name,
        "tree": json.dumps(tree),
    }
    blob = save(tensors, metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(blob))


def load_result(path: Path, key: str) -> Any:
    """The cached result of job ``key``; :class:`StoreError` for foreign or corrupt files."""
    from safetensors import SafetensorError, safe_open

    fix = f"delete {path} and rerun (only that job is recomputed)"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise StoreError(f"{path} is not a tdakit result file; {fix}.")
            if meta.get("key") != key:
                raise StoreError(
                    f"The cache file {path} belongs to another job (key "
                    f"{str(meta.get('key'))[:12]}, expected {key[:12]}); {fix}."
                )
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        return _decode(json.loads(meta["tree"]), tensors)
    except StoreError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        raise StoreError(f"The cached job result {path} is unreadable ({err}); {fix}.") from err


def prepare_cache_dir(cache_dir: str | os.PathLike) -> Path:
    """Create (or check) the cache directory before any job runs; clean stale temp files."""
    path = Path(cache_dir)
    if str(cache_dir).strip() == "":
        raise ConfigError("cache_dir is an empty path; give a directory (or None for no cache).")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".tdakit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise StoreError(
            f"The executor cache directory {str(path)!r} cannot be used ({err.strerror or err}): "
            "it must be a writable directory. Choose another cache_dir."
        ) from err
    for sub in [path, *(p for p in path.iterdir() if p.is_dir())]:
        remove_stale_temps(sub)
    return path
