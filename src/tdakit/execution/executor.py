"""One executor for every independent job (retraining, featurisation shards).

:func:`run_jobs` runs a list of :class:`~tdakit.execution.job.Job` s

- ``"serial"``: in this process, one after the other;
- ``"local"``: in ``workers`` spawned processes that die with their parent;
- ``"ray"``: as Ray tasks on a local Ray instance or the cluster at ``ray_address``
  (optional extra: ``pip install "tdakit[ray]"``),

each with one torch thread, and returns their results in job order. With a ``cache_dir``
every finished result is written atomically in a safe format (:mod:`tdakit.execution.cache`)
under its content key and skipped on the next run, so an interrupted batch resumes where it
stopped. A failing job does not stop the others: all failures are reported together in one
:class:`~tdakit.errors.JobError`. Scripts using the ``"local"`` backend need the
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from tdakit.errors import JobError, require
from tdakit.execution.backends import _run_local, _run_ray, _run_serial
from tdakit.execution.cache import cache_path, load_result, prepare_cache_dir, save_result
from tdakit.execution.job import Job, JobFailure

__all__ = ["BACKENDS", "Executor", "run_jobs"]

BACKENDS = ("local", "ray", "serial")


def run_jobs(
    jobs: Sequence[Job],
    *,
    backend: str = "local",
    workers: int = 2,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    ray_address: str | None = None,
    desc: str = "jobs",
) -> list[Any]:
    """Run ``jobs`` and return their results in job order (see the module docstring).

    Cached results are loaded instead of recomputed; jobs with equal keys run once. When
    some jobs fail, the others still finish and are cached, then one :class:`TdakitError`
    lists every failure (its ``.failures`` holds :class:`JobFailure` records and its
    ``.results`` the results, ``None`` where a job failed).
    """
    require(backend in BACKENDS, f"Unknown backend {backend!r}; use one of {BACKENDS}.")
    require(isinstance(workers, int) and workers >= 1, f"workers must be >= 1, got {workers!r}.")
    jobs = list(jobs)
    require(all(isinstance(j, Job) for j in jobs), "run_jobs needs a list of Job objects.")
    cache = None if cache_dir is None else prepare_cache_dir(cache_dir)
    results: dict[str, Any] = {}
    if cache is not None:
        for job in jobs:
            path = cache_path(cache, job.key)
            if job.key not in results and path.exists():
                results[job.key] = load_result(path, job.key)
    todo: dict[str, int] = {}
    for i, job in enumerate(jobs):
        if job.key not in results and job.key not in todo:
            todo[job.key] = i
    failures: list[JobFailure] = []
    bar = tqdm(
        total=len(todo) + len(results), initial=len(results), desc=desc, disable=not progress
    )

    def done(i: int, result: Any) -> None:
        job = jobs[i]
        if cache is not None:
            save_result(cache_path(cache, job.key), job.key, job.name, result)
        results[job.key] = result
        bar.update(1)

    def failed(i: int, err: BaseException) -> None:
        details = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        cause = err.__cause__
        if cause is not None:  # a worker's traceback travels as the cause
            details = f"{cause}\n{details}"
        failures.append(JobFailure(i, jobs[i].label(), f"{type(err).__name__}: {err}", details))
        bar.update(1)

    pending = [todo[k] for k in todo]
    try:
        if pending and backend == "serial":
            _run_serial(jobs, pending, done, failed)
        elif pending and backend == "local":
            _run_local(jobs, pending, min(workers, len(pending)), done, failed)
        elif pending:
            _run_ray(jobs, pending, workers, ray_address, done, failed)
    finally:
        bar.close()
    out = [results.get(job.key) for job in jobs]
    if failures:
        failures.sort(key=lambda f: f.index)
        lines = [f"  - {f.job}: {f.error}" for f in failures]
        hint = " Finished jobs are cached; rerun to retry only the missing ones." if cache else ""
        err = JobError(
            f"{len(failures)} of {len(todo)} job(s) failed:\n" + "\n".join(lines) + "\n"
            f"First failure in detail:\n{failures[0].details}{hint}"
        )
        err.failures, err.results = failures, out  # type: ignore[attr-defined]
        raise err
    return out


@dataclass(frozen=True)
class Executor:
    """Where and how oracle jobs run (see :func:`run_jobs`).

    ``cache_dir`` keeps every finished retraining on disk, keyed by content, so a rerun
    (or an interrupted one) only computes what is missing.
    """

    backend: str = "local"
    workers: int = 2
    cache_dir: str | os.PathLike | None = None
    progress: bool = True
    ray_address: str | None = None

    def __post_init__(self) -> None:
        require(self.backend in BACKENDS, f"Unknown backend {self.backend!r}; use {BACKENDS}.")

    def run(self, jobs: Sequence[Job], desc: str = "jobs") -> list[Any]:
        return run_jobs(
            jobs,
            backend=self.backend,
            workers=self.workers,
            cache_dir=self.cache_dir,
            progress=self.progress,
            ray_address=self.ray_address,
            desc=desc,
        )
