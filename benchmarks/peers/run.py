"""tdakit against peer libraries (dattri, captum, traker, kronfluence) on the same models.

For every method in ``configs.GROUPS`` and every case (digits MLP; Fashion-MNIST MLP), runs
tdakit and each installed peer with matched hyperparameters, each in its own process, and
reports wall time and peak-memory ratios (tdakit / peer) and the per-query Spearman
correlation between tdakit's and the peer's scores (oriented to tdakit's convention).

    bash benchmarks/peers/setup.sh && .venv-peers/bin/python benchmarks/peers/run.py

Options: ``--cases digits``, ``--only cg,ekfac``, ``--repeats 1``, ``--out PATH``.
"""

from __future__ import annotations

import argparse
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
from configs import GROUPS, Group  # type: ignore[import-not-found]  # noqa: E402
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
    def __init__(self, workdir: Path, repeats: int, timeout: float) -> None:
        self.workdir, self.repeats, self.timeout = workdir, repeats, timeout
        self.outdir = workdir / "out"
        self.outdir.mkdir(parents=True, exist_ok=True)

    def child(self, case: str, lib: str, method: str, kw: dict, tag: str) -> dict:
        """Run one measurement in a fresh process; return its record (or the failure)."""
        out = self.outdir / f"{case}-{tag}"
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
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=self.timeout, env=env
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {self.timeout:.0f} s"}
        if proc.returncode != 0 or not Path(f"{out}.json").exists():
            lines = [x for x in (proc.stderr or proc.stdout).strip().splitlines() if x.strip()]
            return {"error": (lines[-1] if lines else f"exit code {proc.returncode}")[:300]}
        record = json.loads(Path(f"{out}.json").read_text())
        record["scores"] = torch.load(f"{out}.pt")
        record["process_seconds"] = time.perf_counter() - t0
        return record


def resolve(kw: dict, values: dict) -> dict:
    return {
        k: values.get(v, v) if isinstance(v, str) and v.startswith("@") else v
        for k, v in kw.items()
    }


def agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    s = spearman_rows(a, b)
    return float(s.mean()), float(s.min())


def run_group(runner: Runner, case: str, group: Group, values: dict, log) -> list[dict]:
    rows: list[dict] = []
    kw = dict(group.tdakit)
    method = kw.pop("method")
    kw = resolve({**kw, **group.tdakit_case_kw.get(case, {})}, values)
    log(f"[{case}] {group.key}: tdakit ...")
    mine = runner.child(case, "tdakit", method, kw, f"{group.key}-tdakit")
    log(f"    tdakit: {_summary(mine)}")
    if "damping" in mine and method == "trak":
        values["@trak_damping"] = mine["damping"]
    peer_records: dict[str, dict] = {}
    for peer in group.peers:
        row = {
            "case": case,
            "group": group.key,
            "title": group.title,
            "peer": peer.label,
            "lib": peer.lib,
            "same_math": peer.same_math,
            "tdakit": mine,
        }
        if case in peer.skip:
            row["peer_result"] = {"error": peer.skip[case]}
        elif not available(peer.lib):
            row["peer_result"] = {"error": f"{peer.lib} is not installed in this environment"}
        else:
            pkw = resolve({**peer.kw, **peer.case_kw.get(case, {})}, values)
            log(f"[{case}] {group.key}: {peer.label} ...")
            row["peer_result"] = runner.child(
                case, peer.lib, peer.method, pkw, f"{group.key}-{peer.lib}-{peer.method}"
            )
        res = row["peer_result"]
        log(f"    {peer.label}: {_summary(res)}")
        if "scores" in res and "scores" in mine:
            row["spearman"] = agreement(mine["scores"], res["scores"])
            log(f"    Spearman mean {row['spearman'][0]:.4f} min {row['spearman'][1]:.4f}")
        peer_records[peer.lib] = res
        rows.append(row)
    for label, ckw, lib in group.checks:
        ref = peer_records.get(lib, {})
        if lib == "traker":
            values["@traker_matrix"] = str(runner.workdir / f"{case}-traker-matrix.pt")
        check = {"case": case, "group": group.key, "label": label, "peer_lib": lib}
        if "scores" not in ref:
            check["error"] = f"no {lib} scores to compare with"
        else:
            ckw = resolve({**kw, **ckw}, values)
            res = runner.child(case, "tdakit", method, ckw, f"{group.key}-check")
            if "scores" in res:
                check["spearman"] = agreement(res["scores"], ref["scores"])
                log(f"    check {label}: Spearman {check['spearman'][0]:.4f}")
            else:
                check["error"] = res.get("error")
        rows.append({"check": check})
    return rows


def _summary(res: dict) -> str:
    if "error" in res:
        return "FAILED/SKIPPED: " + res["error"]
    return f"{res['seconds']:.2f} s, +{res['peak_mib']:.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="digits,fmnist")
    ap.add_argument("--only", default="", help="comma-separated group keys (default: all)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per config (best-of)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")
    ap.add_argument("--workdir", default="benchmarks/results/peers")
    ap.add_argument("--out", default="docs/benchmarks-peers.md")
    args = ap.parse_args()
    workdir = Path(args.workdir).resolve()
    runner = Runner(workdir, args.repeats, args.timeout)
    only = set(filter(None, args.only.split(",")))
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows: list[dict] = []
    case_info = {}
    for case in cases:
        print(f"[{case}] training the model ...", flush=True)
        blob = torch.load(prepare_case(case, workdir))
        case_info[case] = {k: v for k, v in blob.items() if not torch.is_tensor(v)}
        values = {"@lissa_scale": blob["lissa_scale"]}
        for group in GROUPS:
            if case in group.cases and (not only or group.key in only):
                rows += run_group(runner, case, group, values, lambda m: print(m, flush=True))
    meta = {
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "total_seconds": time.perf_counter() - t0,
        "repeats": args.repeats,
        "cases": case_info,
        "command": " ".join([".venv-peers/bin/python", "benchmarks/peers/run.py", *sys.argv[1:]]),
    }
    text = write_report(rows, meta, Path(args.out))
    print(text)


if __name__ == "__main__":
    main()
