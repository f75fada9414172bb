"""One executor for every retraining (or featurisation) workload.

A :class:`Job` is a picklable function plus its arguments, with a *content key*: the
sha256 of a canonical description (function name, recipe config, data fingerprints,
indices, seeds, ...), never a user-chosen name. :func:`run_jobs` runs a list of jobs

- ``"serial"``: in this process, one after the other;
- ``"local"``: in ``workers`` spawned processes (``ProcessPoolExecutor``; one torch
  thread per worker);
- ``"ray"``: as Ray tasks on a local Ray instance or the cluster at ``ray_address``
  (optional extra: ``pip install "tdakit[ray]"``),

and returns their results in job order. With a ``cache_dir`` every finished result is
written atomically (temp file + ``os.replace``) under its key and skipped on the next run,
so an interrupted batch resumes where it stopped. A failing job does not stop the others:
all failures are collected and reported together in one :class:`TdakitError` at the end.

Large arguments shared by many jobs (the training data) can be wrapped in :class:`Shared`
at the top level of ``args``/``kwargs``: they are sent to each worker once, not per job.
Scripts using the ``"local"`` backend need the ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import os
import pickle
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tdakit.batching import fingerprint as fingerprint_tensors
from tdakit.errors import TdakitError, require
from tdakit.fingerprints import describe_callable

__all__ = [
    "BACKENDS",
    "Executor",
    "Job",
    "JobFailure",
    "Shared",
    "content_key",
    "describe",
    "run_jobs",
]

BACKENDS = ("local", "ray", "serial")
CACHE_VERSION = 1  # bump when oracle jobs change meaning; old cache entries are then ignored


class Shared:
    """A large job argument (e.g. the training tensors) sent to every worker only once."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self._key: str | None = None

    @property
    def key(self) -> str:
        if self._key is None:
            self._key = content_key(self.value)
        return self._key

    def __repr__(self) -> str:
        return f"Shared({self.key[:12]})"


@dataclass(frozen=True)
class _Ref:
    key: str


def describe(obj: Any) -> Any:
    """A JSON-able canonical description of ``obj`` (tensors by content fingerprint)."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, Shared):
        return {"shared": obj.key}
    if isinstance(obj, torch.Tensor):
        return {"tensor": fingerprint_tensors(obj)}
    if isinstance(obj, np.ndarray):
        return {"tensor": fingerprint_tensors(torch.from_numpy(np.ascontiguousarray(obj)))}
    if isinstance(obj, (torch.device, torch.dtype, Path)):
        return str(obj)
    if isinstance(obj, torch.nn.Module):
        return {"module": describe(dict(obj.state_dict()))}
    if hasattr(obj, "config") and callable(obj.config):
        return {type(obj).__name__: describe(obj.config())}
    if isinstance(obj, Mapping):
        return {str(k): describe(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple, range)):
        return [describe(v) for v in obj]
    if callable(obj):
        return describe_callable(obj)
    try:  # any other picklable object: by its type and the digest of its pickle
        blob = pickle.dumps(obj)
    except Exception:
        blob = None
    if blob is not None:  # the class's code and the instance's state
        return {
            "object": describe_callable(type(obj)),
            "state": hashlib.sha256(blob).hexdigest()[:16],
        }
    raise TdakitError(
        f"Cannot build a content key from a {type(obj).__name__}; give the Job an explicit "
        "describe={...} of JSON-able values (str, numbers, lists, dicts, tensors)."
    )


def content_key(*parts: Any) -> str:
    """Full sha256 hex digest of the canonical description of ``parts``."""
    text = json.dumps(describe(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Job:
    """``fn(*args, **kwargs)`` with a content key.

    ``describe`` (JSON-able, tensors allowed) replaces the arguments in the key when given;
    otherwise the key is built from the arguments themselves. ``name`` labels the job in
    progress bars and error messages.
    """

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    describe: Any = None
    key: str = ""

    def __post_init__(self) -> None:
        require(callable(self.fn), f"Job.fn must be callable, got {type(self.fn).__name__}.")
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        if not self.key:
            content = self.describe if self.describe is not None else [self.args, self.kwargs]
            key = content_key(CACHE_VERSION, describe_callable(self.fn), content)
            object.__setattr__(self, "key", key)
        if not self.name:
            object.__setattr__(self, "name", f"{getattr(self.fn, '__name__', 'job')}")

    def label(self) -> str:
        return f"{self.name} [key {self.key[:12]}]"


@dataclass
class JobFailure:
    """One failed job: its position, label and the error (with the worker's traceback)."""

    index: int
    job: str
    error: str
    details: str = ""


# --- worker side ---------------------------------------------------------------------------
_SHARED: collections.OrderedDict[str, Any] = collections.OrderedDict()
_SHARED_KEEP = 8


def _init_worker(shared: Mapping[str, Any]) -> None:
    torch.set_num_threads(1)
    _SHARED.update(shared)


def _resolve(value: Any, refs: Mapping[str, Any] | None) -> Any:
    if not isinstance(value, _Ref):
        return value
    if value.key not in _SHARED:
        require(refs is not None, "A shared argument did not reach the worker.")
        import ray

        _SHARED[value.key] = ray.get(refs[value.key])  # type: ignore[index]
        while len(_SHARED) > _SHARED_KEEP:
            _SHARED.popitem(last=False)
    return _SHARED[value.key]


def _execute(fn: Callable, args: tuple, kwargs: dict, refs: Mapping | None = None) -> Any:
    args = tuple(_resolve(a, refs) for a in args)
    kwargs = {k: _resolve(v, refs) for k, v in kwargs.items()}
    return fn(*args, **kwargs)


def _execute_ray(fn: Callable, args: tuple, kwargs: dict, refs: list) -> Any:
    torch.set_num_threads(1)
    return _execute(fn, args, kwargs, refs[0])


# --- driver side ---------------------------------------------------------------------------
def _split_shared(job: Job) -> tuple[tuple, dict, dict[str, Any]]:
    shared: dict[str, Any] = {}

    def swap(v: Any) -> Any:
        if isinstance(v, Shared):
            shared[v.key] = v.value
            return _Ref(v.key)
        return v

    args = tuple(swap(a) for a in job.args)
    kwargs = {k: swap(v) for k, v in job.kwargs.items()}
    return args, kwargs, shared


def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.pt"


def _load(path: Path, key: str) -> Any:
    try:
        entry = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise TdakitError(
            f"The cached job result {path} is unreadable ({err}); delete that file and rerun "
            "(only the missing job is recomputed)."
        ) from err
    require(
        isinstance(entry, dict) and entry.get("key") == key,
        f"The cache file {path} does not belong to job {key[:12]}; delete it and rerun.",
    )
    return entry["result"]


def _save(path: Path, key: str, name: str, result: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}.{path.name}")
    try:
        torch.save({"key": key, "name": name, "result": result}, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    cache = None if cache_dir is None else Path(cache_dir)
    results: dict[str, Any] = {}
    if cache is not None:
        for job in jobs:
            path = _cache_path(cache, job.key)
            if job.key not in results and path.exists():
                results[job.key] = _load(path, job.key)
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
            _save(_cache_path(cache, job.key), job.key, job.name, result)
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
        err = TdakitError(
            f"{len(failures)} of {len(todo)} job(s) failed:\n" + "\n".join(lines) + "\n"
            f"First failure in detail:\n{failures[0].details}{hint}"
        )
        err.failures, err.results = failures, out  # type: ignore[attr-defined]
        raise err
    return out


def _run_serial(jobs, pending, done, failed) -> None:
    for i in pending:
        job = jobs[i]
        args = tuple(a.value if isinstance(a, Shared) else a for a in job.args)
        kwargs = {k: v.value if isinstance(v, Shared) else v for k, v in job.kwargs.items()}
        try:
            result = job.fn(*args, **kwargs)
        except Exception as err:
            failed(i, err)
        else:
            done(i, result)


def _run_local(jobs, pending, workers, done, failed) -> None:
    split = {i: _split_shared(jobs[i]) for i in pending}
    shared: dict[str, Any] = {}
    for _, _, s in split.values():
        shared.update(s)
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(shared,)
    )
    try:
        futures = {pool.submit(_execute, jobs[i].fn, split[i][0], split[i][1]): i for i in pending}
        remaining = set(futures)
        while remaining:
            finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    result = fut.result()
                except Exception as err:
                    failed(futures[fut], err)
                else:
                    done(futures[fut], result)
    except BaseException:  # e.g. Ctrl-C: drop the queue, keep what is cached
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise TdakitError(
            'The "ray" backend needs Ray: pip install "tdakit[ray]" (or use backend="local").'
        ) from err
    return ray


def _run_ray(jobs, pending, workers, address, done, failed) -> None:
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            options["num_cpus"] = workers
        ray.init(address=address, **options)
    try:
        remote = ray.remote(num_cpus=1, max_retries=1)(_execute_ray)
        split = {i: _split_shared(jobs[i]) for i in pending}
        refs: dict[str, Any] = {}
        for _, _, s in split.values():
            for key, value in s.items():
                if key not in refs:
                    refs[key] = ray.put(value)
        tasks = {remote.remote(jobs[i].fn, split[i][0], split[i][1], [refs]): i for i in pending}
        remaining = list(tasks)
        try:
            while remaining:
                finished, remaining = ray.wait(remaining, num_returns=1)
                for ref in finished:
                    try:
                        result = ray.get(ref)
                    except Exception as err:
                        failed(tasks[ref], err)
                    else:
                        done(tasks[ref], result)
        except BaseException:  # e.g. Ctrl-C: cancel what is still queued or running
            for ref in remaining:
                ray.cancel(ref)
            raise
    finally:
        if started:
            ray.shutdown()


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
