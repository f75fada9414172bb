"""Benchmark suites from Python and the command line: run one suite (results table, HTML
report) or all of them (the leaderboard).

>>> from tdakit import bench
>>> result = bench.run("digits-mlp", out_dir="bench-out")     # a built-in suite or a .toml
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from tdakit.errors import require
from tdakit.execution import Executor
from tdakit.report.suite_report import build_suite_report
from tdakit.storage.fileio import atomic_write, prepare_output_dir
from tdakit.suites.config import Suite, builtin_names, load
from tdakit.suites.results import leaderboard_markdown, stamp, write_tables
from tdakit.suites.runner import SuiteResult, run_suite

__all__ = ["leaderboard", "run"]


def run(
    suite: str | Path | Suite,
    out_dir: str | Path = "tdakit-bench",
    *,
    cache_dir: str | Path | None = None,
    executor: Executor | None = None,
    progress: bool = True,
) -> SuiteResult:
    """Run ``suite`` and write ``results.csv``, ``results.json`` and ``report.html`` into
    ``out_dir/<suite name>`` (cache: ``cache_dir``, default ``out_dir/cache``)."""
    spec = suite if isinstance(suite, Suite) else load(suite)
    require(str(out_dir).strip() != "", "out_dir is an empty path; give a directory.")
    out = Path(out_dir) / spec.name
    prepare_output_dir(out)
    cache = Path(cache_dir) if cache_dir is not None else Path(out_dir) / "cache"
    result = run_suite(spec, cache, executor=executor, progress=progress)
    write_tables(result.rows, out, {**stamp(), "suite": spec.to_dict(), "seconds": result.seconds})
    build_suite_report(result).write(out / "report.html")
    return result


def leaderboard(
    suites: Sequence[str | Path | Suite] | None = None,
    out: str | Path = "docs/leaderboard.md",
    *,
    work_dir: str | Path = "tdakit-bench",
    executor: Executor | None = None,
    progress: bool = True,
    command: str = "tdakit bench leaderboard",
) -> Path:
    """Run every suite in ``suites`` (names, ``.toml`` paths or parsed :class:`Suite`
    objects; default: all built-in ones) and write the leaderboard Markdown."""
    t0 = time.perf_counter()
    rows = []
    for name in suites or builtin_names():
        rows += run(name, work_dir, executor=executor, progress=progress).rows
    meta = {**stamp(), "seconds": time.perf_counter() - t0, "command": command}
    text = leaderboard_markdown(rows, meta).encode()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(text))
    write_tables(rows, Path(work_dir), meta)
    return path
