"""Crash-safe files: atomic writes, stale temp-file clean-up, checksums, content keys.

Every file tdakit writes (feature-store chunks, executor results, reports) goes through
:func:`atomic_write`: a temp file in the same directory, fsync, then ``os.replace``, so a
crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tdakit.errors import ConfigError, StoreError

_STALE_SECONDS = 24 * 3600  # temp files of other hosts older than this are removed
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
TMP_RE = re.compile(r"^\.tmp\.(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.[0-9a-f]{8}\..+$")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    if isinstance(o, Path) or (
        type(o).__module__ == "torch" and type(o).__name__ in ("dtype", "device")
    ):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def canonical_json(obj: Any) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default
    )


def cache_key(**parts: Any) -> str:
    """Short stable hex digest (16 chars of sha256 over canonical JSON) of ``parts``.

    Use it to name content-keyed cache directories, e.g.
    ``root / cache_key(model=model_fp, data=data_fp, proj="rademacher", seed=0, dim=512)``.
    """
    try:
        text = canonical_json(parts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"cache_key parts must be JSON-serialisable (str, numbers, lists, dicts; no NaN): "
            f"{exc}; convert the offending value to a string or number first"
        ) from exc
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not possible on every platform; best effort
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(target: Path, write: Callable[[BinaryIO], Any], exclusive: bool = False) -> bool:
    """Write via temp file + fsync + rename; ``exclusive`` never replaces an existing file.

    Returns False only when ``exclusive`` and ``target`` already existed.
    """
    tmp = target.with_name(f".tmp.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{target.name}")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if not exclusive:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # atomic create-if-absent
            except FileExistsError:
                return False
            except OSError:  # no hard links on this filesystem
                if target.exists():
                    return False
                os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(target.parent)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. no permission: the process exists
        pass
    return True


def remove_stale_temps(directory: Path) -> None:
    """Delete temp files of crashed writers: dead local processes, or older than a day."""
    for entry in directory.glob(".tmp.*"):
        m = TMP_RE.match(entry.name)
        if m is None or int(m["pid"]) == os.getpid():
            continue
        local = m["host"] == _HOST and os.name == "posix"
        with contextlib.suppress(OSError):
            if (local and not _alive(int(m["pid"]))) or (
                time.time() - entry.stat().st_mtime > _STALE_SECONDS
            ):
                entry.unlink()


class HashingWriter:
    """File-like wrapper hashing and counting what is written through it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.nbytes = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.nbytes += memoryview(data).nbytes
        return self.f.write(data)


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def prepare_output_dir(out: Path) -> bool:
    """Create ``out`` (if needed) and check that it is writable, before any work is done.
    Returns whether it was created here."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".tdakit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise StoreError(
            f"Cannot write to the output directory {str(out)!r} ({err.strerror or err}); "
            "choose a writable directory with --out."
        ) from err
    return created
