"""tdakit against peer libraries (dattri, captum, traker, kronfluence) on the same models.

For every method in ``configs.GROUPS`` and every case (digits MLP; Fashion-MNIST MLP), runs
tdakit and each installed peer with matched hyperparameters, each in its own process, and
reports wall time and peak-memory ratios (tdakit / peer) and the per-query Spearman
correlation between tdakit's and the peer's scores (oriented to tdakit's convention).

    bash benchmarks/peers/setup.sh && .venv-peers/bin/python benchmarks/peers/run.py

Options: ``--cases digits``, ``--only cg,ekfac``, ``--libs tdakit`` (re-run only some
libraries; the others' saved results are reported), ``--fresh`` (replace the saved records
of what is re-run instead of merging with them), ``--repeats 1``, ``--out PATH``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from common import CASES, prepare_case, spearman_rows  # type: ignore[import-not-found]  # noqa: E402
from configs import GROUPS, Group, Peer  # type: ignore[import-not-found]  # noqa: E402
from report import write_report  # type: ignore[import-not-found]  # noqa: E402

MODULES = {
    "tdakit": "tdakit",
    "dattri": "dattri",
    "captum": "captum",
    "traker": "trak",
    "kronfluence": "kronfluence",
}


def available(lib: str) -> bool:
    return importlib.util.find_spec(MODULES[lib]) is not None


class Runner:
    def __init__(
        self,
        workdir: Path,
        repeats: int,
        timeout: float,
        libs: set[str] | None = None,
        fresh: bool = False,
    ) -> None:
        self.workdir, self.repeats, self.timeout = workdir, repeats, timeout
        self.libs, self.fresh = libs, fresh  # libs: None = all
        self.outdir = workdir / "out"
        self.outdir.mkdir(parents=True, exist_ok=True)

    def runs(self, lib: str) -> bool:
        return self.libs is None or lib in self.libs

    def child(self, case: str, lib: str, method: str, kw: dict, tag: str) -> dict:
        """Run one measurement in a fresh process; its record (or failure) goes to
        ``out/{case}-{tag}.json`` (+ ``.pt`` scores) and is returned. A re-run keeps the
        earlier runs' times and peaks: the best time and the largest peak over all runs
        are reported (contention from other jobs only ever adds time). With ``fresh`` the
        earlier records are replaced. A library not selected (``libs``) is not re-run."""
        if not self.runs(lib):
            return self.load(case, tag)
        out = self.outdir / f"{case}-{tag}"
        before = {} if self.fresh else self.load(case, tag)
        for suffix in (".pt", ".json"):
            Path(f"{out}{suffix}").unlink(missing_ok=True)
        cmd = [
            sys.executable,
            str(HERE / "child.py"),
            str(self.workdir),
            case,
            lib,
            method,
            json.dumps(kw),
            str(out),
            str(self.repeats),
        ]
        env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
        load = os.getloadavg()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=self.timeout, env=env
            )
            failed = proc.returncode != 0 or not Path(f"{out}.json").exists()
            lines = [x for x in (proc.stderr or proc.stdout).strip().splitlines() if x.strip()]
            error = (lines[-1] if lines else f"exit code {proc.returncode}")[:300]
        except subprocess.TimeoutExpired:
            failed, error = True, f"timed out after {self.timeout:.0f} s"
        if failed:
            Path(f"{out}.json").write_text(json.dumps({"error": error}))
        else:  # the load average (1 min) at the start of each run; best-of over re-runs
            record = json.loads(Path(f"{out}.json").read_text())
            record["loads"] = [load[0]] * len(record["times"])
            if "times" in before:
                record["times"] = before["times"] + record["times"]
                record["peaks"] = before["peaks"] + record["peaks"]
                record["loads"] = (
                    before.get("loads", [None] * len(before["times"])) + record["loads"]
                )
                record["seconds"] = min(record["times"])
                record["peak_mib"] = max(record["peaks"])
            best = record["times"].index(record["seconds"])
            record["load_at_best"] = record["loads"][best]
            Path(f"{out}.json").write_text(json.dumps(record))
        return self.load(case, tag)

    def load(self, case: str, tag: str) -> dict:
        path = self.outdir / f"{case}-{tag}"
        if not Path(f"{path}.json").exists():
            return {"error": "not run"}
        record = json.loads(Path(f"{path}.json").read_text())
        if Path(f"{path}.pt").exists():
            record["scores"] = torch.load(f"{path}.pt")
        return record


def resolve(kw: dict, values: dict) -> dict:
    """Fill in ``"@name"`` values, also inside nested dicts (solver configurations)."""

    def one(v):
        if isinstance(v, dict):
            return resolve(v, values)
        return values.get(v, v) if isinstance(v, str) and v.startswith("@") else v

    return {k: one(v) for k, v in kw.items()}


def _tdakit_kw(group: Group, case: str) -> tuple[str, dict]:
    kw = dict(group.tdakit)
    method = kw.pop("method")
    return method, {**kw, **group.tdakit_case_kw.get(case, {})}


def _tag(group: Group, peer: Peer) -> str:
    return f"{group.key}-{peer.lib}-{peer.method}"


def run_group(runner: Runner, case: str, group: Group, values: dict, log) -> None:
    method, kw = _tdakit_kw(group, case)
    log(f"[{case}] {group.key}: tdakit ...")
    mine = runner.child(case, "tdakit", method, resolve(kw, values), f"{group.key}-tdakit")
    log(f"    tdakit: {_summary(mine)}")
    if method == "trak" and "damping" in mine:
        values["@trak_damping"] = mine["damping"]
        # the same relative damping on traker's unscaled Gaussian matrix (entries ~ N(0, 1))
        values["@trak_damping_raw"] = mine["damping"] * kw["projection"]
    for peer in group.peers:
        if case in peer.skip or not available(peer.lib):
            continue
        log(f"[{case}] {group.key}: {peer.label} ...")
        pkw = resolve({**peer.kw, **peer.case_kw.get(case, {})}, values)
        res = runner.child(case, peer.lib, peer.method, pkw, _tag(group, peer))
        log(f"    {peer.label}: {_summary(res)}")
        if "scores" in res and "scores" in mine:
            log(
                "    Spearman mean {:.4f} min {:.4f}".format(
                    *agreement(mine["scores"], res["scores"])
                )
            )
    for i, (label, ckw, _lib) in enumerate(group.checks):
        res = runner.child(
            case, "tdakit", method, resolve({**kw, **ckw}, values), f"{group.key}-check{i}"
        )
        log(f"    check {label}: {_summary(res)}")


def agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    s = spearman_rows(a, b)
    return float(s.mean()), float(s.min())


def collect(runner: Runner, case: str, group: Group) -> list[dict]:
    """The report rows of one (case, group) from the saved records."""
    mine = runner.load(case, f"{group.key}-tdakit")
    rows, records = [], {}
    for peer in group.peers:
        if case in peer.skip:
            res = {"error": peer.skip[case]}
        elif not available(peer.lib):
            res = {"error": f"{peer.lib} is not installed in this environment"}
        else:
            res = runner.load(case, _tag(group, peer))
        records[peer.lib] = res
        row = {
            "case": case,
            "group": group.key,
            "title": group.title,
            "peer": peer.label,
            "lib": peer.lib,
            "same_math": peer.same_math,
            "tdakit": mine,
            "peer_result": res,
        }
        if "scores" in res and "scores" in mine:
            row["spearman"] = agreement(mine["scores"], res["scores"])
        rows.append(row)
    for i, (label, _ckw, lib) in enumerate(group.checks):
        res, ref = runner.load(case, f"{group.key}-check{i}"), records.get(lib, {})
        check = {"case": case, "group": group.key, "label": label, "peer_lib": lib}
        if "scores" in res and "scores" in ref:
            check["spearman"] = agreement(res["scores"], ref["scores"])
        else:
            check["error"] = res.get("error") or ref.get("error") or "—"
        rows.append({"check": check})
    return rows


def _summary(res: dict) -> str:
    if "error" in res:
        return "FAILED: " + res["error"]
    return f"{res['seconds']:.2f} s, +{res['peak_mib']:.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="digits,fmnist")
    ap.add_argument("--only", default="", help="comma-separated group keys (default: all)")
    ap.add_argument("--libs", default="", help="comma-separated libraries to run (default: all)")
    ap.add_argument(
        "--fresh",
        action="store_true",
        help="replace the saved records of the configurations run (default: merge, best-of)",
    )
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per config (best-of)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")
    ap.add_argument("--workdir", default="benchmarks/results/peers")
    ap.add_argument("--out", default="docs/benchmarks-peers.md")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the report from the saved results without running anything",
    )
    args = ap.parse_args()
    workdir = Path(args.workdir).resolve()
    libs = set(filter(None, args.libs.split(","))) or None
    unknown_libs = sorted((libs or set()) - set(MODULES))
    if unknown_libs:
        raise SystemExit(f"unknown librar(ies) {unknown_libs}; choose from {list(MODULES)}")
    runner = Runner(workdir, args.repeats, args.timeout, libs, args.fresh)
    only = set(filter(None, args.only.split(",")))
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    case_info = {}
    for case in cases:
        if not args.report_only:
            print(f"[{case}] training the model ...", flush=True)
            prepare_case(case, workdir)
        blob = torch.load(workdir / f"{case}-case.pt")
        case_info[case] = {k: v for k, v in blob.items() if not torch.is_tensor(v)}
        if args.report_only:
            continue
        values = {"@lissa_scale": blob["lissa_scale"]}
        for group in GROUPS:
            if case in group.cases and (not only or group.key in only):
                run_group(runner, case, group, values, lambda m: print(m, flush=True))
    runs_file = workdir / "runs.json"
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else []
    if not args.report_only:
        runs.append(
            {
                "command": " ".join(
                    [".venv-peers/bin/python", "benchmarks/peers/run.py", *sys.argv[1:]]
                ),
                "date": started,
                "minutes": (time.perf_counter() - t0) / 60,
                "load_before": load_before,
                "load_after": os.getloadavg(),
                "repeats": args.repeats,
            }
        )
        runs_file.write_text(json.dumps(runs))
    rows = [
        r for case in cases for g in GROUPS if case in g.cases for r in collect(runner, case, g)
    ]
    text = write_report(rows, {"runs": runs, "cases": case_info}, Path(args.out))
    print(text)


if __name__ == "__main__":
    main()
