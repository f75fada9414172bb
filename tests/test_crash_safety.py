"""Processes killed (SIGKILL) at random points: a featurisation into the feature store and an
executor run with local workers. Resumed runs are bit-identical to uninterrupted ones; no
worker outlives its parent; no temp file outlives the next run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from tdakit.execution import Job, run_jobs

HERE = Path(__file__).parent

FEATURIZE = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {here!r})
    import tdakit as tda
    from conftest import tiny_data, tiny_mlp
    from tdakit.data.sources import as_source
    from tdakit.storage import FeatureStore
    X, y = tiny_data(n=160)
    method = tda.GradDot(tda.Task(tiny_mlp()))
    task = method.task
    store = FeatureStore.open({path!r}, 160, task.num_params, dtype="float64", chunk_rows=8)
    source = as_source((X, y))
    def rows(a, b):
        time.sleep({delay})
        batch = next(iter(source.subset(torch.arange(a, b)).batches(task, 64)))
        return method._featurize(batch, "train")
    store.fill(rows)
""")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killed_featurisation_resumes_bit_identical(tmp_path):
    from tdakit.storage import FeatureStore

    def run(path: Path, delay: float, kill_after: float | None) -> None:
        code = FEATURIZE.format(here=str(HERE), path=str(path), delay=delay)
        proc = subprocess.Popen([sys.executable, "-c", code])
        if kill_after is None:
            assert proc.wait(timeout=300) == 0
            return
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    run(tmp_path / "reference", 0.0, None)
    rng = random.Random(0)
    for _ in range(3):  # killed at random points, then resumed
        run(tmp_path / "killed", 0.05, rng.uniform(1.5, 3.0))
    run(tmp_path / "killed", 0.0, None)
    ref = FeatureStore.load(tmp_path / "reference").verify().read()
    got = FeatureStore.load(tmp_path / "killed").verify().read()
    assert np.array_equal(ref, got)
    assert not list((tmp_path / "killed").glob(".tmp.*"))  # stale temp files cleaned


def slow_square(seed: int) -> torch.Tensor:
    time.sleep(0.4)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(64, 64, generator=g, dtype=torch.float64)
    return a @ a


EXECUTE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    from test_crash_safety import slow_square
    from tdakit.execution import Job, run_jobs
    if __name__ == "__main__":
        jobs = [Job(slow_square, (s,)) for s in range(10)]
        run_jobs(jobs, backend="local", workers=2, cache_dir={cache!r}, progress=False)
""")


def test_killed_executor_leaves_no_orphans_and_resumes_bit_identical(tmp_path):
    cache = tmp_path / "cache"
    script = tmp_path / "run.py"
    script.write_text(EXECUTE.format(here=str(HERE), cache=str(cache)))
    rng = random.Random(1)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script)])
        time.sleep(rng.uniform(2.0, 4.0))
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)], "a worker outlived its parent"
    subprocess.run([sys.executable, str(script)], check=True, timeout=300)
    jobs = [Job(slow_square, (s,)) for s in range(10)]
    resumed = run_jobs(jobs, backend="serial", cache_dir=cache, progress=False)
    fresh = run_jobs(jobs, backend="serial", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(resumed, fresh, strict=True))
    assert not list(cache.rglob(".tmp.*"))
    assert os.listdir(cache)
