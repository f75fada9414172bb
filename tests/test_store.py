"""Tests for the chunked, resumable feature store."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tdakit.errors import StoreError, TdakitError
from tdakit.storage import fileio
from tdakit.storage.store import FeatureStore, cache_key

N, DIM, CHUNK = 10, 3, 4  # 3 chunks: [0, 4), [4, 8), [8, 10)


def features(start: int, stop: int) -> np.ndarray:
    """Deterministic rows: row r depends only on r."""
    rows = np.arange(start, stop, dtype=np.float64)[:, None]
    return np.sin(rows * 0.37 + np.arange(DIM) * 1.3)


REFERENCE = features(0, N).astype(np.float32)


class Counter:
    """Feature function that records its calls and can fail on a given call."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fail_on = fail_on

    def __call__(self, start: int, stop: int) -> np.ndarray:
        self.calls.append((start, stop))
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("boom")
        return features(start, stop)


def make(path: Path, **kw) -> FeatureStore:
    kw = {"meta": {"model": "abc", "proj": {"kind": "rademacher", "seed": 0}}, **kw}
    return FeatureStore.open(path, N, DIM, chunk_rows=CHUNK, **kw)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_round_trip(tmp_path: Path) -> None:
    store = make(tmp_path / "s").fill(features, progress=True)
    assert store.is_complete() and store.missing_chunks() == []
    np.testing.assert_array_equal(store.read(), REFERENCE)
    t = store.as_tensor(dtype=torch.float64)
    assert t.dtype == torch.float64 and torch.equal(t, torch.from_numpy(REFERENCE).double())
    parts = list(store.iter_chunks())
    assert [(a, b) for a, b, _ in parts] == [(0, 4), (4, 8), (8, 10)]
    assert all(isinstance(arr, np.memmap) for _, _, arr in parts)
    np.testing.assert_array_equal(np.concatenate([a for _, _, a in parts]), REFERENCE)
    loaded = FeatureStore.load(tmp_path / "s")
    assert loaded.shape == (N, DIM) and loaded.meta == store.meta and loaded.key == store.key
    np.testing.assert_array_equal(loaded.verify().read(check=True), REFERENCE)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["n_rows"] == N and manifest["chunk_rows"] == CHUNK
    assert manifest["meta"]["proj"]["seed"] == 0 and manifest["version"] == 1


def test_chunk_boundaries(tmp_path: Path) -> None:
    store = make(tmp_path / "s")
    assert store.n_chunks == 3
    assert [store.chunk_range(j) for j in range(3)] == [(0, 4), (4, 8), (8, 10)]
    np.testing.assert_array_equal(store.rows_for_chunks([2, 0]), [0, 1, 2, 3, 8, 9])
    assert store.shard_chunks((1, 2)) == [1] and store.shard_chunks((0, 2)) == [0, 2]
    with pytest.raises(TdakitError, match="chunk id"):
        store.chunk_range(3)
    fn = Counter()
    store.fill(fn)
    assert fn.calls == [(0, 4), (4, 8), (8, 10)]
    for start, stop in [(0, 10), (3, 9), (4, 8), (9, 10), (5, 5)]:
        np.testing.assert_array_equal(store.read(start, stop), REFERENCE[start:stop])
    with pytest.raises(TdakitError, match="start <= stop"):
        store.read(0, 11)
    # one-chunk store, chunk_rows larger than n_rows
    big = FeatureStore.open(tmp_path / "b", N, DIM, chunk_rows=100).fill(features)
    assert big.n_chunks == 1 and np.array_equal(big.read(), REFERENCE)


def test_resume_after_exception(tmp_path: Path) -> None:
    store = make(tmp_path / "s")
    failing = Counter(fail_on=2)
    with pytest.raises(RuntimeError, match="boom"):
        store.fill(failing)
    assert store.missing_chunks() == [1, 2]
    with pytest.raises(TdakitError, match=r"2 of 3 chunks missing \(1, 2\)"):
        store.read()
    again = Counter()
    make(tmp_path / "s").fill(again)  # a fresh process would reopen it like this
    assert again.calls == [(4, 8), (8, 10)]
    np.testing.assert_array_equal(store.read(), REFERENCE)
    uninterrupted = make(tmp_path / "u").fill(features)
    np.testing.assert_array_equal(store.read(), uninterrupted.read())
    assert make(tmp_path / "s").fill(again) and len(again.calls) == 2  # nothing left to do


def test_simulated_kill_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "s"
    make(path).fill(features)
    (path / "chunk_000001.json").unlink()  # killed between .npy and its record
    npy2 = path / "chunk_000002.npy"
    npy2.write_bytes(npy2.read_bytes()[:-5])  # truncated .npy under a valid record
    host = fileio._HOST
    stale = path / f".tmp.{host}.{dead_pid()}.0123abcd.chunk_000000.npy"
    live = path / f".tmp.{host}.{os.getpid()}.0123abcd.chunk_000000.npy"
    remote = path / f".tmp.{'f' * 8}.{dead_pid()}.0123abcd.chunk_000000.npy"
    remote_old = path / f".tmp.{'f' * 8}.{dead_pid()}.4567abcd.chunk_000001.npy"
    for tmp in (stale, live, remote, remote_old):
        tmp.write_bytes(b"partial")
    os.utime(remote_old, (1e9, 1e9))

    store = make(path)
    assert not stale.exists(), "temp file of a dead local writer must be cleaned up on open"
    assert live.exists(), "temp file of a live process must be left alone"
    assert remote.exists(), "recent temp file of another host may still be in use"
    assert not remote_old.exists(), "day-old temp files are removed"
    assert store.missing_chunks() == [1, 2]
    with pytest.raises(TdakitError, match=r"missing \(1, 2\)"):
        store.read()
    fn = Counter()
    store.fill(fn)
    assert fn.calls == [(4, 8), (8, 10)]
    np.testing.assert_array_equal(store.verify().read(), REFERENCE)


def test_failure_while_publishing_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make(tmp_path / "s")
    real_replace = os.replace

    def flaky_replace(src: str, dst: str) -> None:
        if str(dst).endswith("chunk_000001.json"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk full"):
        store.fill(features)
    monkeypatch.undo()
    assert (tmp_path / "s" / "chunk_000001.npy").exists()
    assert store.missing_chunks() == [1, 2]
    assert not list((tmp_path / "s").glob(".tmp.*")), "failed writes remove their temp file"
    fn = Counter()
    store.fill(fn)
    assert fn.calls == [(4, 8), (8, 10)]
    np.testing.assert_array_equal(store.read(check=True), REFERENCE)


def _fill_shard(path: str, shard: tuple[int, int]) -> None:
    make(Path(path)).fill(features, shard=shard)


def test_shards_sequential(tmp_path: Path) -> None:
    path = tmp_path / "s"
    make(path).fill(features, shard=(1, 2))
    assert make(path).missing_chunks() == [0, 2]
    assert make(path).missing_chunks(shard=(1, 2)) == []
    make(path).fill(features, shard=(0, 2))
    np.testing.assert_array_equal(FeatureStore.load(path).read(), REFERENCE)
    with pytest.raises(TdakitError, match="shard"):
        make(path).missing_chunks(shard=(2, 2))


def test_shards_in_parallel_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_fill_shard, args=(path, (i, 2))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    np.testing.assert_array_equal(FeatureStore.load(path).verify().read(), REFERENCE)


def test_reopen_with_different_config_raises(tmp_path: Path) -> None:
    path = tmp_path / "s"
    make(path).fill(features)
    make(path, meta={"proj": {"seed": 0, "kind": "rademacher"}, "model": "abc"})  # same meta
    with pytest.raises(TdakitError) as info:
        make(path, meta={"model": "xyz", "proj": {"kind": "rademacher", "seed": 1}})
    msg = str(info.value)
    assert "meta.model" in msg and "meta.proj.seed" in msg and "kind" not in msg
    assert "FeatureStore.clear" in msg and "different cache directory" in msg
    with pytest.raises(TdakitError, match="n_rows"):
        FeatureStore.open(path, N + 1, DIM, chunk_rows=CHUNK, meta=make(path).meta)
    with pytest.raises(TdakitError, match="dtype"):
        make(path, dtype="float64")
    FeatureStore.clear(path)
    assert not path.exists()
    store = make(path, meta={"model": "xyz"})
    assert store.missing_chunks() == [0, 1, 2]


def test_verify_detects_corruption(tmp_path: Path) -> None:
    store = make(tmp_path / "s").fill(features)
    npy = tmp_path / "s" / "chunk_000001.npy"
    raw = bytearray(npy.read_bytes())
    raw[-3] ^= 0xFF  # same size, different bytes
    npy.write_bytes(bytes(raw))
    assert store.is_complete()  # the cheap check cannot see it ...
    with pytest.raises(TdakitError, match=r"chunk_000001\.npy") as info:
        store.verify()  # ... the checksum can
    assert "drop_chunk" in str(info.value) and "clear()" in str(info.value)
    with pytest.raises(StoreError, match="sha256 does not match"):
        store.read(4, 6)  # every read is checked, not only on request
    with pytest.raises(StoreError, match="sha256 does not match"):
        FeatureStore.load(tmp_path / "s").read(4, 6)
    store.drop_chunk(1)
    store.fill(features)
    np.testing.assert_array_equal(store.verify().read(), REFERENCE)


def test_invalid_chunks_rejected(tmp_path: Path) -> None:
    store = make(tmp_path / "s")
    bad = features(0, 4)
    bad[1, 2] = np.nan
    with pytest.raises(TdakitError, match=r"chunk 0 .*NaN/inf.*learning rate"):
        store.write_chunk(0, bad)
    with pytest.raises(TdakitError, match="NaN/inf"):
        store.fill(lambda a, b: np.full((b - a, DIM), np.inf))
    with pytest.raises(TdakitError, match=r"expected shape \(4, 3\), got \(4, 2\)"):
        store.write_chunk(0, np.zeros((4, 2)))
    with pytest.raises(TdakitError, match=r"expected shape \(2, 3\)"):
        store.write_chunk(2, np.zeros((4, 3)))
    with pytest.raises(TdakitError, match="floating-point"):
        store.write_chunk(0, np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(TdakitError, match="float numpy array or torch tensor"):
        store.write_chunk(0, [[0.0] * 3] * 4)
    with pytest.raises(TdakitError, match="overflow"):
        f16 = FeatureStore.open(tmp_path / "h", N, DIM, dtype="float16", chunk_rows=CHUNK)
        f16.write_chunk(0, np.full((4, 3), 1e6))
    assert store.missing_chunks() == [0, 1, 2]  # nothing was written
    store.write_chunk(0, torch.from_numpy(features(0, 4)).to(torch.bfloat16))
    store.write_chunk(1, torch.from_numpy(features(4, 8)).requires_grad_())
    assert store.missing_chunks() == [2] and store.read(4, 8).dtype == np.float32
    np.testing.assert_allclose(store.read(0, 4), REFERENCE[:4], atol=1e-2)


def test_bad_arguments_and_manifests(tmp_path: Path) -> None:
    with pytest.raises(TdakitError, match="n_rows must be a positive integer"):
        FeatureStore.open(tmp_path / "a", 0, DIM)
    with pytest.raises(TdakitError, match="dtype must be one of"):
        FeatureStore.open(tmp_path / "a", N, DIM, dtype="int8")
    with pytest.raises(TdakitError, match="JSON-serialisable"):
        FeatureStore.open(tmp_path / "a", N, DIM, meta={"f": object()})
    with pytest.raises(TdakitError, match=r"manifest\.json missing"):
        FeatureStore.load(tmp_path / "nothing")
    make(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text("{not json")
    with pytest.raises(TdakitError, match="corrupted feature store manifest"):
        FeatureStore.load(tmp_path / "c")
    with pytest.raises(TdakitError, match="corrupted"):
        make(tmp_path / "c")


def test_clear_only_removes_store_files(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = make(path).fill(features)
    (path / "notes.txt").write_text("keep me")
    store.clear()
    assert sorted(p.name for p in path.iterdir()) == ["notes.txt"]
    with pytest.raises(TdakitError, match="was cleared"):
        store.read()
    FeatureStore.clear(tmp_path / "never-existed")  # no-op


def test_cache_key() -> None:
    a = cache_key(model="m", proj={"kind": "gauss", "seed": 0}, dim=np.int64(8))
    assert a == cache_key(dim=8, proj={"seed": 0, "kind": "gauss"}, model="m")
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != cache_key(model="m", proj={"kind": "gauss", "seed": 1}, dim=8)
    assert cache_key(x=(1, 2)) == cache_key(x=[1, 2])
    with pytest.raises(TdakitError, match="JSON-serialisable"):
        cache_key(x=float("nan"))


def test_swapped_chunks_nan_chunks_and_read_only_stores(tmp_path: Path) -> None:
    import json

    store = make(tmp_path / "s").fill(features)
    d = tmp_path / "s"
    a, b = (d / "chunk_000000.npy").read_bytes(), (d / "chunk_000001.npy").read_bytes()
    (d / "chunk_000000.npy").write_bytes(b)  # two chunk files swapped (same size)
    (d / "chunk_000001.npy").write_bytes(a)
    assert store.is_complete()
    with pytest.raises(StoreError, match="moved from another position"):
        FeatureStore.load(d).read()
    (d / "chunk_000000.npy").write_bytes(a)
    (d / "chunk_000001.npy").write_bytes(b)
    np.testing.assert_array_equal(FeatureStore.load(d).read(), REFERENCE)
    # a chunk with NaN whose record was rewritten to match is still refused
    nan = features(0, CHUNK).astype(np.float32)
    nan[0, 0] = np.nan
    np.save(d / "chunk_000000.npy", nan)
    rec = json.loads((d / "chunk_000000.json").read_text())
    from tdakit.storage.fileio import file_sha256

    rec.update(
        sha256=file_sha256(d / "chunk_000000.npy"), nbytes=(d / "chunk_000000.npy").stat().st_size
    )
    (d / "chunk_000000.json").write_text(json.dumps(rec))
    with pytest.raises(StoreError, match="NaN or inf"):
        FeatureStore.load(d).read()
    store.drop_chunk(0)
    store.fill(features)
    # a complete store in a read-only directory opens and reads: nothing is written
    # (root ignores permissions, so any attempt to write is made to fail instead)
    import tdakit.storage.store as store_module

    def no_writes(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    original = store_module.atomic_write
    store_module.atomic_write = no_writes
    try:
        again = FeatureStore.open(d, N, DIM, chunk_rows=CHUNK, meta=store.meta)
        np.testing.assert_array_equal(again.read(), REFERENCE)
    finally:
        store_module.atomic_write = original
