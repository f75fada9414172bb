"""Executor: content keys, caching, resume after a killed worker, failures, Ray."""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tdakit.errors import StoreError, TdakitError
from tdakit.execution import Job, Shared, content_key, run_jobs
from tdakit.execution.backends import _import_ray
from tdakit.groundtruth.jobs import Measure, train_and_measure
from tdakit.training import TrainingRecipe


# --- job functions (module level: workers import this module by name) ---------------------
def noisy_product(seed: int, base: torch.Tensor, log_dir: str) -> torch.Tensor:
    """Deterministic result; leaves a file per execution so tests can count runs."""
    Path(log_dir, f"ran-{seed}-{os.getpid()}-{os.urandom(4).hex()}").touch()
    gen = torch.Generator().manual_seed(seed)
    return base @ torch.randn(base.shape[1], 2, generator=gen, dtype=base.dtype)


def crash_once(seed: int, base: torch.Tensor, log_dir: str, marker: str) -> torch.Tensor:
    """Job 3 kills its worker process the first time (no exception, no cleanup)."""
    if seed == 3 and not os.path.exists(marker):
        Path(marker).touch()
        time.sleep(1.0)  # let the parent collect the results of the earlier jobs
        os._exit(3)
    return noisy_product(seed, base, log_dir)


def fail_on(seed: int, bad: int) -> int:
    if seed == bad:
        raise ValueError(f"boom at {seed}")
    return seed * 10


def interrupt_at(seed: int, bad: int, log_dir: str) -> int:
    if seed == bad:
        raise KeyboardInterrupt
    # Real jobs take time; with ~1 ms jobs one worker can finish the whole queue before
    # the driver reacts to the interrupt, and the test would measure scheduling luck.
    time.sleep(0.3)
    Path(log_dir, f"ran-{seed}-{os.getpid()}").touch()
    return seed


def _runs(log_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in log_dir.iterdir())


@pytest.fixture
def base():
    return torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


class Plain:
    def __init__(self, v: int) -> None:
        self.v = v


def test_content_keys_follow_content_not_identity(base):
    job = Job(noisy_product, (1, base, "x"))
    assert Job(noisy_product, (1, base.clone(), "x")).key == job.key
    assert Job(noisy_product, (2, base, "x")).key != job.key
    changed = base.clone()
    changed[0, 0] += 1e-12
    assert Job(noisy_product, (1, changed, "x")).key != job.key
    assert Job(noisy_product, (1, base.float(), "x")).key != job.key
    assert Job(fail_on, (1, base, "x")).key != job.key  # the function is part of the key
    recipe = TrainingRecipe(lr=0.1)
    assert content_key(recipe) == content_key(TrainingRecipe(lr=0.1))
    assert content_key(recipe) != content_key(recipe.replace(lr=0.2))
    assert Shared(base).key == Shared(base.clone()).key
    described = Job(noisy_product, (1, base, "x"), describe={"what": 1})
    assert described.key == Job(noisy_product, (9, base, "y"), describe={"what": 1}).key
    with pytest.raises(TdakitError, match="describe"):
        Job(noisy_product, (threading.Lock(),))  # neither plain data nor picklable
    # any other picklable object: keyed by its class's code and its state
    assert content_key(Plain(1)) == content_key(Plain(1)) != content_key(Plain(2))


def test_serial_cache_skips_finished_jobs_and_dedupes(tmp_path, base):
    logs = tmp_path / "logs"
    logs.mkdir()
    jobs = [Job(noisy_product, (s, Shared(base), str(logs)), describe=s) for s in (0, 1, 1, 2)]
    first = run_jobs(jobs, backend="serial", cache_dir=tmp_path / "c", progress=False)
    assert _runs(logs) == [0, 1, 2]  # the duplicate ran once
    again = run_jobs(jobs, backend="serial", cache_dir=tmp_path / "c", progress=False)
    assert _runs(logs) == [0, 1, 2]  # nothing recomputed
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first[1], first[2])
    assert not list((tmp_path / "c").rglob(".tmp*"))  # no temp files left behind


def test_local_resumes_after_a_killed_worker_and_matches_serial(tmp_path, base):
    logs, cache = tmp_path / "logs", tmp_path / "cache"
    logs.mkdir()
    marker = str(tmp_path / "crashed")
    jobs = [Job(crash_once, (s, Shared(base), str(logs), marker), describe=s) for s in range(6)]
    with pytest.raises(TdakitError, match="failed") as info:  # one worker: jobs run in order
        run_jobs(jobs, backend="local", workers=1, cache_dir=cache, progress=False)
    failed = {f.index for f in info.value.failures}
    assert 3 in failed and {0, 1, 2}.isdisjoint(failed)
    assert set(_runs(logs)) == {0, 1, 2}  # finished before the crash, and cached
    for p in logs.iterdir():
        p.unlink()
    resumed = run_jobs(jobs, backend="local", workers=2, cache_dir=cache, progress=False)
    assert set(_runs(logs)) == failed  # only the missing jobs ran
    serial = run_jobs(jobs, backend="serial", progress=False)  # marker exists: no crash
    for a, b in zip(resumed, serial, strict=True):
        assert torch.equal(a, b)


def test_failing_job_is_named_and_others_are_kept(tmp_path):
    jobs = [Job(fail_on, (s, 2), name=f"seed-{s}") for s in range(4)]
    with pytest.raises(TdakitError) as info:
        run_jobs(jobs, backend="serial", cache_dir=tmp_path, progress=False)
    message = str(info.value)
    assert "1 of 4 job(s) failed" in message and "seed-2" in message
    assert "ValueError: boom at 2" in message and jobs[2].key[:12] in message
    assert info.value.results == [0, 10, None, 30]
    ok = [Job(fail_on, (s, 99), name=f"seed-{s}") for s in range(4)]
    assert run_jobs(ok, backend="serial", progress=False) == [0, 10, 20, 30]


def test_interrupt_stops_the_queue_and_keeps_finished_results(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    jobs = [Job(interrupt_at, (s, 1, str(logs))) for s in range(12)]
    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, backend="local", workers=1, cache_dir=tmp_path / "c", progress=False)
    ran = _runs(logs)
    assert 0 in ran and len(ran) < 6  # queued jobs were cancelled, not run to the end
    cached = len(list((tmp_path / "c").rglob("*.safetensors")))
    assert cached >= 1  # job 0 finished before the interrupt and stays cached
    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, backend="serial", cache_dir=tmp_path / "c", progress=False)
    assert len(list((tmp_path / "c").rglob("*.safetensors"))) == cached  # nothing lost


class Planted:
    """Unpickling this would create a file: the cache must never unpickle anything."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_corrupt_planted_and_foreign_cache_files_are_refused(tmp_path):
    cache = tmp_path / "cache"
    job, other = Job(fail_on, (1, 5)), Job(fail_on, (1, 6))
    run_jobs([job, other], backend="serial", cache_dir=cache, progress=False)
    path = next(p for p in cache.rglob("*.safetensors") if p.name.startswith(job.key))
    other_path = next(p for p in cache.rglob("*.safetensors") if p.name.startswith(other.key))
    good = path.read_bytes()
    path.write_bytes(b"not a result file")
    with pytest.raises(StoreError, match="unreadable.*delete"):
        run_jobs([job], backend="serial", cache_dir=cache, progress=False)
    marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps({"key": job.key, "result": Planted(str(marker))}))
    torch.save({"key": job.key, "result": Planted(str(marker))}, path)
    with pytest.raises(StoreError, match="delete"):
        run_jobs([job], backend="serial", cache_dir=cache, progress=False)
    assert not marker.exists()  # nothing was unpickled
    path.write_bytes(other_path.read_bytes())  # the right format, another job's result
    with pytest.raises(StoreError, match="belongs to another job"):
        run_jobs([job], backend="serial", cache_dir=cache, progress=False)
    path.write_bytes(good)
    assert run_jobs([job], backend="serial", cache_dir=cache, progress=False) == [fail_on(1, 5)]


def test_unusable_cache_dir_fails_before_any_job_runs(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    calls = tmp_path / "calls"
    job = Job(record_call, (str(calls),))
    for bad in (blocker, blocker / "sub"):
        with pytest.raises(StoreError, match="writable directory"):
            run_jobs([job], backend="serial", cache_dir=bad, progress=False)
    assert not calls.exists()  # the job never ran


def test_stale_temp_files_of_dead_writers_are_cleaned(tmp_path):
    from tdakit.storage.fileio import _HOST

    cache = tmp_path / "cache"
    (cache / "ab").mkdir(parents=True)
    dead = cache / "ab" / f".tmp.{_HOST}.999999.deadbeef.x.safetensors"
    dead.write_bytes(b"half written")
    run_jobs([Job(fail_on, (1, 2))], backend="serial", cache_dir=cache, progress=False)
    assert not dead.exists()


def test_serial_and_local_backends_give_bit_identical_results(tmp_path):
    jobs = [Job(train_tiny, (seed,)) for seed in range(2)]
    serial = run_jobs(jobs, backend="serial", progress=False)
    local = run_jobs(jobs, backend="local", workers=2, progress=False)
    for a, b in zip(serial, local, strict=True):
        assert torch.equal(a, b)


def test_bad_arguments():
    with pytest.raises(TdakitError, match="backend"):
        run_jobs([], backend="slurm")
    with pytest.raises(TdakitError, match="workers"):
        run_jobs([], workers=0)
    assert run_jobs([], backend="local", progress=False) == []


def test_missing_ray_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(TdakitError, match=r'pip install "tdakit\[ray\]"'):
        _import_ray()


def test_ray_backend_gives_identical_results():
    ray = pytest.importorskip("ray", reason="Ray is in the test extra; install tdakit[test]")
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=gen)
    y = torch.randint(0, 3, (40,), generator=gen)
    recipe = TrainingRecipe("mlp", model_kwargs={"hidden": (6,)}, epochs=2, batch_size=8)
    jobs = [
        Job(
            train_and_measure,
            (recipe, Shared(X), Shared(y), Shared(X[:5]), Shared(y[:5])),
            {
                "keep": (X[:, 0] > t).nonzero().squeeze(1),
                "init_seed": s,
                "batch_seed": s,
                "measure": Measure("cross_entropy", "loss"),
                "device": "cpu",
            },
        )
        for s, t in ((0, -9.0), (1, 0.0), (2, 0.5))
    ]
    serial = run_jobs(jobs, backend="serial", progress=False)
    remote = run_jobs(jobs, backend="ray", workers=2, progress=False)
    assert not ray.is_initialized()  # the executor shut down the Ray it started
    for a, b in zip(serial, remote, strict=True):
        assert torch.equal(a, b)


def record_call(path: str) -> int:
    with open(path, "a") as f:
        f.write("x")
    return 1


def train_tiny(seed: int) -> torch.Tensor:
    """A training run whose numerics depend on the thread count without one_thread()."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(256, 64, generator=g)
    w = torch.zeros(64, 8, requires_grad=True)
    y = torch.randint(0, 8, (256,), generator=g)
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(X @ w, y)
        (g_w,) = torch.autograd.grad(loss, [w])
        with torch.no_grad():
            w -= 0.5 * g_w
    return w.detach()
