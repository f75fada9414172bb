"""Feature store: an ``[n_rows, dim]`` float array on disk in row chunks, with a manifest.

``manifest.json`` (format version, n_rows, dim, dtype, chunk_rows, meta; written once),
``chunk_{j:06d}.npy`` (rows ``[j*chunk_rows, (j+1)*chunk_rows)``) and its completion record
``chunk_{j:06d}.json`` (sha256 and size of the .npy). Every file goes through a temp file in
the same directory, fsync and ``os.replace``; a chunk is complete only once its record exists
and matches. No file is shared between chunks, so processes can fill disjoint shards
concurrently. Shards are strided: shard ``(i, n)`` holds the chunk ids ``j % n == i``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from tdakit.errors import StoreError, require
from tdakit.storage.fileio import (
    HashingWriter,
    atomic_write,
    cache_key,
    canonical_json,
    file_sha256,
    remove_stale_temps,
)
from tdakit.storage.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    build_manifest,
    check_same,
    clear_dir,
    read_manifest,
)

if TYPE_CHECKING:
    import torch

__all__ = ["FORMAT_VERSION", "FeatureStore", "cache_key"]


PathLike = str | os.PathLike


class _HybridMethod(classmethod):
    """Bound to the instance when called on one, else to the class."""

    def __get__(self, obj: Any, objtype: type | None = None) -> Callable[..., Any]:
        return functools.partial(self.__func__, objtype if obj is None else obj)


class FeatureStore:
    """Chunked, memory-mapped ``[n_rows, dim]`` float array with a manifest; see module doc."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.n_rows: int = manifest["n_rows"]
        self.dim: int = manifest["dim"]
        self.dtype = np.dtype(manifest["dtype"])
        self.chunk_rows: int = manifest["chunk_rows"]
        self.meta: dict[str, Any] = manifest["meta"]
        self.key = hashlib.sha256(canonical_json(manifest).encode()).hexdigest()
        self._cleared = False
        self._verified: dict[int, tuple[int, int, int]] = {}

    # ----------------------------------------------------------------- construction
    @classmethod
    def open(
        cls,
        path: PathLike,
        n_rows: int,
        dim: int,
        *,
        dtype: str = "float32",
        meta: dict[str, Any] | None = None,
        chunk_rows: int = 2048,
    ) -> FeatureStore:
        """Create the store at ``path``, or reopen it if its manifest matches exactly."""
        manifest = build_manifest(n_rows, dim, dtype, chunk_rows, meta)
        directory = Path(path)
        exists = (directory / MANIFEST).is_file()  # a complete store may be read-only
        try:
            if not exists:
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create feature store directory {directory}: {exc}") from exc
        remove_stale_temps(directory)
        data = json.dumps(manifest, sort_keys=True, indent=1).encode()
        if exists or not atomic_write(
            directory / MANIFEST, lambda f: f.write(data), exclusive=True
        ):
            check_same(read_manifest(directory), manifest, directory)
        return cls(directory, manifest)

    @classmethod
    def load(cls, path: PathLike) -> FeatureStore:
        """Open an existing store without knowing its shape (no meta check)."""
        directory = Path(path)
        require(
            (directory / MANIFEST).is_file(),
            f"no feature store at {directory} (manifest.json missing); create it with "
            "FeatureStore.open(path, n_rows, dim, ...) and fill it first",
            StoreError,
        )
        manifest = read_manifest(directory)
        remove_stale_temps(directory)
        return cls(directory, manifest)

    def __repr__(self) -> str:
        done = self.n_chunks - len(self.missing_chunks())
        return (
            f"FeatureStore({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}, "
            f"chunks={done}/{self.n_chunks})"
        )

    # ----------------------------------------------------------------- geometry
    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.dim)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    def chunk_range(self, j: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` covered by chunk ``j``."""
        require(
            isinstance(j, (int, np.integer)) and 0 <= j < self.n_chunks,
            f"chunk id must be an integer in [0, {self.n_chunks}), got {j!r}",
        )
        start = int(j) * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n_rows)

    def rows_for_chunks(self, chunks: Iterable[int]) -> np.ndarray:
        """Sorted int64 row indices covered by ``chunks``."""
        ranges = [np.arange(*self.chunk_range(j), dtype=np.int64) for j in sorted(set(chunks))]
        return np.concatenate(ranges) if ranges else np.zeros(0, dtype=np.int64)

    def shard_chunks(self, shard: tuple[int, int] | None = None) -> list[int]:
        """Chunk ids of shard ``(i, n)``: those ``j`` with ``j % n == i`` (all if None)."""
        if shard is None:
            return list(range(self.n_chunks))
        ok = isinstance(shard, tuple) and len(shard) == 2
        ok = ok and all(isinstance(v, (int, np.integer)) for v in shard)
        require(
            ok and 0 <= shard[0] < shard[1],
            f"shard must be a tuple (i, n) of integers with 0 <= i < n, got {shard!r}",
        )
        return list(range(int(shard[0]), self.n_chunks, int(shard[1])))

    def _npy(self, j: int) -> Path:
        return self.path / f"chunk_{j:06d}.npy"

    def _record(self, j: int) -> Path:
        return self.path / f"chunk_{j:06d}.json"

    def _check_alive(self) -> None:
        require(
            not self._cleared,
            f"feature store {self.path} was cleared; create it again with FeatureStore.open(...)",
            StoreError,
        )

    # ----------------------------------------------------------------- completeness
    def _read_record(self, j: int) -> dict[str, Any] | None:
        try:
            rec = json.loads(self._record(j).read_text())
        except (OSError, ValueError):
            return None
        start, stop = self.chunk_range(j)
        expected = {
            "chunk": j,
            "start": start,
            "stop": stop,
            "dim": self.dim,
            "dtype": self.dtype.name,
            "store": self.key,
        }
        ok = isinstance(rec, dict) and all(rec.get(k) == v for k, v in expected.items())
        return rec if ok else None

    def is_chunk_complete(self, j: int, check: bool = False) -> bool:
        """Record present and matching, .npy of the recorded size (and sha256 if ``check``)."""
        rec = self._read_record(j)
        try:
            size = self._npy(j).stat().st_size
        except OSError:
            return False
        if rec is None or size != rec.get("nbytes"):
            return False
        return not check or file_sha256(self._npy(j)) == rec.get("sha256")

    def missing_chunks(self, shard: tuple[int, int] | None = None) -> list[int]:
        """Ids of incomplete chunks, restricted to ``shard`` (strided, see module doc)."""
        return [j for j in self.shard_chunks(shard) if not self.is_chunk_complete(j)]

    def is_complete(self, shard: tuple[int, int] | None = None) -> bool:
        return not self.missing_chunks(shard)

    def _require_complete(self, chunks: Iterable[int]) -> None:
        missing = [j for j in chunks if not self.is_chunk_complete(j)]
        shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
        require(
            not missing,
            f"feature store {self.path} is incomplete: {len(missing)} of {self.n_chunks} "
            f"chunks missing ({shown}); run store.fill(fn) (for each shard) to compute them",
            StoreError,
        )

    # ----------------------------------------------------------------- writing
    def write_chunk(self, j: int, array: np.ndarray | torch.Tensor) -> None:
        """Validate ``array`` (shape, float dtype, finite) and write it atomically as chunk j."""
        self._check_alive()
        start, stop = self.chunk_range(j)
        j, what = int(j), f"chunk {j} (rows [{start}, {stop}))"
        if not isinstance(array, np.ndarray):
            import torch

            require(
                isinstance(array, torch.Tensor) and array.is_floating_point(),
                f"{what}: expected a float numpy array or torch tensor, got "
                f"{getattr(array, 'dtype', type(array).__name__)}",
            )
            array = array.detach().to("cpu")
            array = (array.float() if array.dtype == torch.bfloat16 else array).numpy()
        require(
            np.issubdtype(array.dtype, np.floating),
            f"{what}: expected a floating-point array, got dtype {array.dtype}; "
            "features must be float16/32/64",
        )
        require(
            array.shape == (stop - start, self.dim),
            f"{what}: expected shape {(stop - start, self.dim)}, got {tuple(array.shape)}; "
            "the feature function must return one row of length dim per row in [start, stop)",
        )
        with np.errstate(over="ignore"):  # overflow shows up as inf, reported just below
            array = np.ascontiguousarray(array, dtype=self.dtype)
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        require(
            bad == 0,
            f"{what}: {bad} non-finite values (NaN/inf) after casting to {self.dtype}; this "
            "usually means NaN/inf gradients: check the loss, the learning rate and the "
            "model weights (or overflow when storing as float16)",
        )
        self._record(j).unlink(missing_ok=True)  # never leave an old record over new bytes
        w: list[HashingWriter] = []

        def write_npy(f: BinaryIO) -> None:
            w.append(HashingWriter(f))
            np.lib.format.write_array(w[0], array, allow_pickle=False)

        atomic_write(self._npy(j), write_npy)
        rec = {
            "chunk": j,
            "start": start,
            "stop": stop,
            "dim": self.dim,
            "store": self.key,
            "dtype": self.dtype.name,
            "nbytes": w[0].nbytes,
            "sha256": w[0].sha.hexdigest(),
        }
        atomic_write(self._record(j), lambda f: f.write(json.dumps(rec).encode()))

    def drop_chunk(self, j: int) -> None:
        """Delete chunk ``j`` (record first) so that the next ``fill`` recomputes it."""
        self.chunk_range(j)
        self._record(j).unlink(missing_ok=True)
        self._npy(j).unlink(missing_ok=True)

    def fill(
        self,
        fn: Callable[[int, int], np.ndarray | torch.Tensor],
        shard: tuple[int, int] | None = None,
        progress: bool = False,
    ) -> FeatureStore:
        """Compute every missing chunk of ``shard`` as ``fn(start, stop)`` and write it.

        Resumable: complete chunks are skipped, so rerunning after a crash computes only what
        is missing (``fn`` must be deterministic for that to equal an uninterrupted run).
        """
        self._check_alive()
        require(callable(fn), f"fill: fn must be a callable fn(start, stop), got {type(fn)}")
        todo = self.missing_chunks(shard)
        from tqdm.auto import tqdm

        desc = "features" if shard is None else f"features shard {shard[0]}/{shard[1]}"
        with tqdm(total=len(todo), desc=desc, unit="chunk", disable=not progress) as bar:
            for j in todo:
                self.write_chunk(j, fn(*self.chunk_range(j)))
                bar.update(1)
        return self

    # ----------------------------------------------------------------- reading
    def _load_chunk(self, j: int, check: bool) -> np.ndarray:
        """Chunk ``j`` memory-mapped. Its bytes are checked against the sha256 in its record
        (which names its position and store) the first time this store object reads it, and
        again whenever the file changes; a chunk holding NaN/inf is refused."""
        path, (start, stop) = self._npy(j), self.chunk_range(j)
        fix = f"delete it with store.drop_chunk({j}) or store.clear() and run store.fill(fn)"
        try:
            st = path.stat()
        except OSError as exc:
            raise StoreError(f"missing feature chunk {path}: {exc}; {fix}") from exc
        signature = (st.st_size, st.st_mtime_ns, st.st_ino)
        fresh = check or self._verified.get(j) != signature
        if fresh and file_sha256(path) != (self._read_record(j) or {}).get("sha256"):
            raise StoreError(
                f"corrupted feature chunk {path}: its sha256 does not match its record (a "
                f"changed byte, or a chunk file moved from another position); {fix}"
            )
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise StoreError(f"corrupted feature chunk {path}: {exc}; {fix}") from exc
        require(
            arr.shape == (stop - start, self.dim) and arr.dtype == self.dtype,
            f"corrupted feature chunk {path}: holds {arr.shape} {arr.dtype}, expected "
            f"{(stop - start, self.dim)} {self.dtype}; {fix}",
            StoreError,
        )
        if fresh:
            require(
                bool(np.isfinite(arr).all()),
                f"feature chunk {path} holds NaN or inf values; {fix}",
                StoreError,
            )
            self._verified[j] = signature
        return arr

    def read(self, start: int = 0, stop: int | None = None, check: bool = False) -> np.ndarray:
        """Rows ``[start, stop)`` as an in-memory array (chunks are verified on first read;
        ``check`` verifies them again)."""
        self._check_alive()
        stop = self.n_rows if stop is None else stop
        require(
            0 <= start <= stop <= self.n_rows,
            f"read: need 0 <= start <= stop <= {self.n_rows}, got start={start}, stop={stop}",
        )
        chunks = range(start // self.chunk_rows, -(-stop // self.chunk_rows) if stop > start else 0)
        self._require_complete(chunks)
        out = np.empty((stop - start, self.dim), dtype=self.dtype)
        for j in chunks:
            c0, c1 = self.chunk_range(j)
            lo, hi = max(start, c0), min(stop, c1)
            out[lo - start : hi - start] = self._load_chunk(j, check)[lo - c0 : hi - c0]
        return out

    def iter_chunks(self, check: bool = False) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(start, stop, array)`` per chunk; arrays are read-only memory maps."""
        self._check_alive()
        self._require_complete(range(self.n_chunks))
        for j in range(self.n_chunks):
            yield (*self.chunk_range(j), self._load_chunk(j, check))

    def as_tensor(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The full array as a torch tensor (optionally moved/cast)."""
        import torch

        return torch.from_numpy(self.read()).to(device=device, dtype=dtype)

    def verify(self) -> FeatureStore:
        """Recompute every chunk's sha256; raise naming missing or corrupted chunk files."""
        self._check_alive()
        self._require_complete(range(self.n_chunks))
        bad = [j for j in range(self.n_chunks) if not self.is_chunk_complete(j, check=True)]
        files = ", ".join(str(self._npy(j)) for j in bad[:10]) + (", ..." if len(bad) > 10 else "")
        require(
            not bad,
            f"corrupted feature chunks in {self.path} (sha256 mismatch): {files}; delete "
            f"them with store.drop_chunk(j) for j in {bad[:10]} (or call store.clear()) and "
            "run store.fill(fn) to recompute",
            StoreError,
        )
        return self

    # ----------------------------------------------------------------- removal
    @_HybridMethod
    def clear(owner: Any, path: PathLike | None = None) -> None:
        """Delete the store's files: ``store.clear()`` or ``FeatureStore.clear(path)``.

        Only files a store writes are removed (records first, manifest last); the directory
        itself goes too if that leaves it empty.
        """
        if isinstance(owner, FeatureStore):
            require(path is None, "store.clear() takes no path; use FeatureStore.clear(path)")
            owner._cleared, path = True, owner.path
        require(path is not None, "FeatureStore.clear(path) needs the store directory")
        clear_dir(Path(path))
