"""Markdown report of the peer benchmark (written to docs/benchmarks-peers.md)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from common import CASES  # type: ignore[import-not-found]
from notes import ENGINE, EXCLUDED, INTRO, NOTES  # type: ignore[import-not-found]
from previous import COMMIT as PREVIOUS_COMMIT  # type: ignore[import-not-found]
from previous import DATE as PREVIOUS_DATE  # type: ignore[import-not-found]
from previous import PREVIOUS  # type: ignore[import-not-found]

FLOOR_MIB = 1.0  # peaks below this are noise; ratios use at least this
FLOOR_S = 0.01  # the previous engine's times were published to 0.01 s
TOLERANCE = 1.10  # new / previous above this: slower or more memory (flagged)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _fmt_time(res: dict) -> str:
    return f"{res['seconds']:.2f}" if "seconds" in res else "—"


def _fmt_mem(res: dict) -> str:
    return f"{res['peak_mib']:.0f}" if "peak_mib" in res else "—"


def _ratio(a: dict, b: dict, key: str) -> float | None:
    if key not in a or key not in b:
        return None
    floor = FLOOR_MIB if key == "peak_mib" else 1e-9
    return max(a[key], floor) / max(b[key], floor)


def _fastest(rows: list[dict]) -> dict[tuple[str, str], str]:
    """(case, group) -> label of the fastest successful peer with the same math."""
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for r in rows:
        res = r.get("peer_result", {})
        if "seconds" in res and r["same_math"]:
            key = (r["case"], r["group"])
            if key not in best or res["seconds"] < best[key][0]:
                best[key] = (res["seconds"], r["peer"])
    return {k: v[1] for k, v in best.items()}


def _prev(r: dict, i: int) -> str:
    prev = PREVIOUS.get((r["case"], r["group"]))
    if prev is None:
        return "—"
    return f"{prev[0]:.2f}" if i == 0 else f"{prev[1]:.0f}"


def table(rows: list[dict]) -> list[str]:
    fastest = _fastest(rows)
    out = [
        "| case | method | peer | peer s | tdakit s | tdakit s (previous engine) | time ratio "
        "| peer MiB | tdakit MiB | tdakit MiB (previous engine) | mem ratio "
        "| Spearman mean (min) | goal |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if "check" in r:
            continue
        mine, res = r["tdakit"], r["peer_result"]
        star = " ★" if fastest.get((r["case"], r["group"])) == r["peer"] else ""
        peer = r["peer"] + star + ("" if r["same_math"] else " (related)")
        if "error" in res or "error" in mine:
            why = res.get("error") or "tdakit: " + mine["error"]
            out.append(
                f"| {r['case']} | {r['title']} | {peer} | — | {_fmt_time(mine)} | {_prev(r, 0)} "
                f"| — | — | {_fmt_mem(mine)} | {_prev(r, 1)} | — | — | {why} |"
            )
            continue
        tr, mr = _ratio(mine, res, "seconds"), _ratio(mine, res, "peak_mib")
        mean, low = r.get("spearman", (float("nan"), float("nan")))
        ok = tr <= 0.5 and mr <= 1.0 and (mean >= 0.99 or not r["same_math"])
        misses = [
            m
            for m, bad in (
                ("time", tr > 0.5),
                ("memory", mr > 1.0),
                ("Spearman", r["same_math"] and mean < 0.99),
            )
            if bad
        ]
        goal = "met" if ok else "missed: " + ", ".join(misses)
        out.append(
            f"| {r['case']} | {r['title']} | {peer} | {_fmt_time(res)} | {_fmt_time(mine)} "
            f"| {_prev(r, 0)} | {tr:.2f} | {_fmt_mem(res)} | {_fmt_mem(mine)} | {_prev(r, 1)} "
            f"| {mr:.2f} | {mean:.4f} ({low:.4f}) | {goal} |"
        )
    return out


def engine_table(rows: list[dict]) -> list[str]:
    """tdakit alone: this run against the previous engine's published numbers."""
    out = [
        "| case | method | time (s), previous engine | time (s), now | time ratio "
        "| peak MiB, previous engine | peak MiB, now | mem ratio | load at the best run "
        "| verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    seen = set()
    for r in rows:
        if "check" in r or (r["case"], r["group"]) in seen:
            continue
        seen.add((r["case"], r["group"]))
        mine, prev = r["tdakit"], PREVIOUS.get((r["case"], r["group"]))
        if prev is None or "seconds" not in mine:
            why = mine.get("error", "no previous number")
            out.append(f"| {r['case']} | {r['title']} | — | — | — | — | — | — | — | {why} |")
            continue
        tr = max(mine["seconds"], FLOOR_S) / max(prev[0], FLOOR_S)
        mr = max(mine["peak_mib"], FLOOR_MIB) / max(prev[1], FLOOR_MIB)
        flags = [
            w for w, bad in (("slower", tr > TOLERANCE), ("more memory", mr > TOLERANCE)) if bad
        ]
        load = mine.get("load_at_best")
        where = "—" if load is None else f"{load:.2f}" + (" (high)" if load >= 1.5 else "")
        out.append(
            f"| {r['case']} | {r['title']} | {prev[0]:.2f} | {mine['seconds']:.2f} | {tr:.2f} "
            f"| {prev[1]:.0f} | {mine['peak_mib']:.0f} | {mr:.2f} | {where} "
            f"| {', '.join(flags) or 'ok'} |"
        )
    return out


def checks(rows: list[dict]) -> list[str]:
    items = [r["check"] for r in rows if "check" in r]
    if not items:
        return []
    out = [
        "",
        "Same-math checks (tdakit run with the peer's own random choices):",
        "",
        "| case | check | against | Spearman mean (min) |",
        "|---|---|---|---|",
    ]
    for c in items:
        sp = c.get("spearman")
        val = f"{sp[0]:.5f} ({sp[1]:.5f})" if sp else c.get("error", "—")
        out.append(f"| {c['case']} | {c['label']} | {c['peer_lib']} | {val} |")
    return out


def write_report(rows: list[dict], meta: dict, path: Path) -> str:
    dists = ["torch", "tdakit", "dattri", "captum", "traker", "kronfluence", "numpy"]
    versions = ", ".join(f"{d} {_version(d)}" for d in dists)
    lines = [
        "# tdakit against peer libraries",
        "",
        INTRO.strip(),
        "",
        "## How to run",
        "",
        "```bash",
        "bash benchmarks/peers/setup.sh        # creates .venv-peers (never touches .venv)",
        ".venv-peers/bin/python benchmarks/peers/run.py",
        "```",
        "",
        f"Machine: {os.cpu_count()} CPU cores, no GPU, {platform.platform()}; "
        f"Python {platform.python_version()}. Versions: {versions}.",
        "The machine was shared with other jobs while these numbers were taken (load "
        "averages below: at a load of up to 2 on these 2 cores single timings carry noise of "
        "a few tens of percent, at higher loads they can be several times the idle time; "
        "peak memory does not depend on the load). Runs that produced the results (a later "
        "run replaces the methods it re-ran; dates are start times):",
        "",
    ]
    for run in meta["runs"]:
        la, lb = run["load_before"], run["load_after"]
        when = f"{run['date']}, " if "date" in run else ""
        lines.append(
            f"- `{run['command']}`: {when}{run['minutes']:.1f} min, best of {run['repeats']}; "
            f"load average (1/5/15 min) before {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f}, after "
            f"{lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f}"
        )
    lines += [
        "",
        "Each configuration ran in its own process; a second (third) run in the same process "
        "follows only when the first took under a minute; a re-run adds its runs to the "
        "earlier ones. Reported: the best time and the largest peak over all runs, for tdakit "
        "and the peers alike (contention only ever adds time).",
        "",
        "Cases:",
        "",
    ]
    for name, info in meta["cases"].items():
        lines.append(
            f"- **{name}**: {CASES[name]['title']}; trained with `tdakit.training.train_model` "
            f"(seed 0, {CASES[name]['epochs']} epochs): final train loss "
            f"{info['train_loss']:.3f}, query accuracy {info['query_acc']:.2f}; "
            f"influence damping λ = {CASES[name]['lam']} (mean-loss convention)."
        )
    lines += [
        "",
        "## Results",
        "",
        "time ratio = tdakit time / peer time and mem ratio = tdakit peak / peer peak (peak RSS "
        "increase during fit + scoring). ★ = the fastest peer implementing the same math, "
        "which the goal (time ratio ≤ 0.5, mem ratio ≤ 1, Spearman ≥ 0.99) refers to; "
        "'(related)' = a peer whose math differs (see the notes), listed for reference. "
        "Ratios are shown rounded; the goal is judged on the unrounded values.",
        "",
        *table(rows),
        *checks(rows),
        "",
        "## tdakit: this engine against the previous engine",
        "",
        f"The previous engine's numbers are those published here before the engine refactor "
        f"(commit {PREVIOUS_COMMIT}, measured {PREVIOUS_DATE} on the same machine type with "
        "the same cases, configurations and measurement; rounded to 0.01 s and 1 MiB, so "
        "ratios of the sub-0.1 s rows mostly show that rounding). Ratio = now / previous; "
        f"'slower' / 'more memory' flag ratios above {TOLERANCE:.2f}. 'load at the best run' "
        "is the 1-minute load average when the reported (best) run started; on this "
        "2-core machine a load of 1.5 or more means the timing shared the cores with other "
        "jobs and is marked '(high)'.",
        "",
        *engine_table(rows),
        "",
        ENGINE.strip(),
        "",
        "## Notes per method",
        "",
    ]
    seen = []
    for r in rows:
        key = r["check"]["group"] if "check" in r else r["group"]
        if key not in seen and key in NOTES:
            seen.append(key)
            lines += [NOTES[key].strip(), ""]
    lines += ["## Peers not compared", "", EXCLUDED.strip(), ""]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return text
