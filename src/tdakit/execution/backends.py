"""The three backends: serial (this process), local (spawned worker processes), Ray.

Every backend computes with one torch thread per job, so a result does not depend on the
backend that produced it (the cache is shared by all three). Local workers die with their
parent: on Linux through the parent-death signal, everywhere through a watchdog thread
that exits the worker once its parent is gone.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import torch

from tdakit.errors import ConfigError, require
from tdakit.execution.job import Job, Shared, _Ref


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run with one intra-op torch thread (the numerics of every backend), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _die_with_parent(parent: int) -> None:
    """Make this worker process exit when ``parent`` does."""
    try:  # Linux: the kernel sends SIGKILL when the parent dies
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="tdakit-parent-watchdog").start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


_SHARED: collections.OrderedDict[str, Any] = collections.OrderedDict()
_SHARED_KEEP = 8


def _init_worker(shared: Mapping[str, Any], parent: int) -> None:
    torch.set_num_threads(1)
    _die_with_parent(parent)
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


def _run_serial(jobs, pending, done, failed) -> None:
    for i in pending:
        job = jobs[i]
        args = tuple(a.value if isinstance(a, Shared) else a for a in job.args)
        kwargs = {k: v.value if isinstance(v, Shared) else v for k, v in job.kwargs.items()}
        try:
            with one_thread():
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
        max_workers=workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(shared, os.getpid()),
    )
    try:
        futures = {pool.submit(_execute, jobs[i].fn, split[i][0], split[i][1]): i for i in pending}
        remaining = set(futures)
        while remaining:
            finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            interrupt: BaseException | None = None
            for fut in sorted(finished, key=futures.__getitem__):  # keep every finished result
                try:
                    result = fut.result()
                except Exception as err:
                    failed(futures[fut], err)
                except BaseException as err:  # e.g. KeyboardInterrupt raised in a job
                    interrupt = interrupt or err
                else:
                    done(futures[fut], result)
            if interrupt is not None:
                raise interrupt
    except BaseException:  # e.g. Ctrl-C: drop the queue, keep what is cached
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ConfigError(
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
