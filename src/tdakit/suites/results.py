"""Suite results as files: a CSV and a JSON table, and the leaderboard in Markdown."""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tdakit.storage.fileio import atomic_write

COLUMNS = [
    "suite",
    "method",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "seconds",
    "peak_mib",
    "chosen",
]


def write_tables(rows: Sequence[dict[str, Any]], out: Path, meta: dict[str, Any]) -> None:
    """``results.csv`` and ``results.json`` (rows plus ``meta``) in ``out``, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "chosen": json.dumps(r.get("chosen", {}), sort_keys=True)})
    text = buf.getvalue().encode()
    atomic_write(out / "results.csv", lambda f: f.write(text))
    blob = json.dumps({"meta": meta, "rows": list(rows)}, indent=1, default=str).encode()
    atomic_write(out / "results.json", lambda f: f.write(blob))


def stamp() -> dict[str, Any]:
    """The commit, the machine and the library versions, for the record."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    import os

    return {
        "commit": commit,
        "machine": _cpu_name() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_name() -> str | None:
    """The processor's model name (Linux), e.g. ``Intel(R) Xeon(R) CPU @ 2.50GHz``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _load(load: Any) -> str:
    return " / ".join(f"{x:.2f}" for x in load) if load else "?"


def _fmt(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def leaderboard_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Every suite x method x metric with its interval, time and memory, as Markdown."""
    lines = [
        "# Leaderboard",
        "",
        f"Regenerated with `{meta.get('command', 'tdakit bench leaderboard')}` at commit "
        f"`{meta.get('commit')}` on {meta.get('machine')} ({meta.get('cpus')} CPUs, "
        f"{meta.get('threads', '?')} torch threads, torch {meta.get('torch')}; load average "
        f"at the end {_load(meta.get('load'))} over 1/5/15 min); total wall time "
        f"{meta.get('seconds', 0):.0f} s.",
        "",
        "Values are point estimates with 95 % bootstrap intervals over queries (or runs); "
        "higher is better for every metric shown. Time and peak memory are per method "
        "(fit + scores), measured in the same run; memory is the resident size above the "
        "process's level before the method ran, so memory an earlier method freed and this "
        "one reused is not counted (small values are lower bounds). Hyperparameters in "
        "brackets were chosen on validation queries, never on the test ground truth.",
        "",
    ]
    for suite in dict.fromkeys(r["suite"] for r in rows):
        mine = [r for r in rows if r["suite"] == suite]
        names = list(dict.fromkeys(r["metric"] for r in mine))
        lines += [
            f"## {suite}",
            "",
            "| method | " + " | ".join(names) + " | time (s) | peak memory (MiB) |",
            "|---" * (len(names) + 3) + "|",
        ]
        for method in dict.fromkeys(r["method"] for r in mine):
            cells, extra = [], mine[0]
            for name in names:
                hit = [r for r in mine if r["method"] == method and r["metric"] == name]
                if not hit:
                    cells.append("–")
                    continue
                r = extra = hit[0]
                ci = (
                    ""
                    if r["ci_low"] is None
                    else f" [{_fmt(r['ci_low'], 2)}, {_fmt(r['ci_high'], 2)}]"
                )
                cells.append(f"{_fmt(r['value'])}{ci}")
            chosen = extra.get("chosen") or {}
            label = method + (
                f" ({', '.join(f'{k}={v}' for k, v in chosen.items())})" if chosen else ""
            )
            lines.append(
                f"| {label} | "
                + " | ".join(cells)
                + f" | {_fmt(extra['seconds'], 2)} | {_fmt(extra['peak_mib'], 0)} |"
            )
        lines.append("")
    return "\n".join(lines)
