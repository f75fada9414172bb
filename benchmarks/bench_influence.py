"""Influence-function solvers on the digits MLP: time and agreement with the exact reference.

Setup: scikit-learn digits, MLP 64-64-10 (P = 4810, small enough for the explicit GGN),
trained with ``tda.train_model``; 1000 training examples x 100 test queries. Every
solver uses the GGN (K-FAC's curvature) with the same absolute damping, so the exact
GGN solve is the reference. Reported per solver: wall time of ``fit`` + ``scores``, the
ratio to one plain forward+backward pass over the 1000 training examples, the mean
per-query Spearman correlation with the reference scores and the relative Frobenius error.
Methods are built from registry configurations (``tda.methods.from_config``); solver
options live in the solver's own dict (the options of ``tda.solvers.CG`` etc.).

Run: .venv/bin/python benchmarks/bench_influence.py [--quick] [--out docs/benchmarks-influence.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import torch

import tdakit as tda
from tdakit.data import load_digits
from tdakit.models import MLP
from tdakit.storage import atomic_write
from tdakit.training import train_model


def spearman_rows(A: torch.Tensor, B: torch.Tensor) -> float:
    """Mean over rows of the Spearman correlation (ties are measure-zero here)."""

    def ranks(M: torch.Tensor) -> torch.Tensor:
        r = M.argsort(dim=1).argsort(dim=1).to(torch.float64)
        return r - r.mean(dim=1, keepdim=True)

    ra, rb = ranks(A), ranks(B)
    return float(((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))).mean())


def forward_backward_time(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    def run() -> None:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()

    run()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer queries and iterations")
    ap.add_argument("--out", default="docs/benchmarks-influence.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    n_train, n_query = 1000, 20 if args.quick else 100
    data = load_digits(seed=0)
    X, y = data.X_train[:n_train], data.y_train[:n_train]
    Xq, yq = data.X_test[:n_query], data.y_test[:n_query]
    model = MLP(64, 10, hidden=(64,))
    train_model(model, X, y, epochs=30, lr=0.05, seed=0, progress=False)
    task = tda.Task(model)
    lam, batch = 1e-2, 1000  # one batch per pass: curvature products are overhead-bound
    fb = forward_backward_time(model, X, y)
    # solver configurations (tda.solvers.<Name>(**options) as plain data)
    solvers = [
        ("exact (GGN, reference)", {"name": "exact"}),
        ("projected k=1024 (GGN)", {"name": "projected", "dim": 1024}),
        ("cg (tol 1e-4, <= 100 it)", {"name": "cg", "tol": 1e-4, "max_iter": 100}),
        ("arnoldi rank 50", {"name": "arnoldi", "rank": 50}),
        ("lissa (depth 200, batch 256)", {"name": "lissa", "depth": 200, "batch_size": 256}),
        ("kfac", {"name": "kfac"}),
        ("ekfac", {"name": "ekfac"}),
        ("datainf (empirical Fisher)", {"name": "datainf"}),
    ]
    if args.quick:
        solvers[2] = ("cg (tol 1e-3, <= 20 it)", {"name": "cg", "tol": 1e-3, "max_iter": 20})
        solvers[4] = (
            "lissa (depth 50, batch 256)",
            {"name": "lissa", "depth": 50, "batch_size": 256},
        )
    rows, ref = [], None
    for name, solver in solvers:
        curvature = None if solver["name"] in ("kfac", "ekfac", "datainf") else "ggn"
        config = {
            "method": "influence",
            "solver": solver,
            "curvature": curvature,
            "damping": lam,
            "batch_size": batch,
        }
        method = tda.methods.from_config(config, task)
        notes = ""
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            S = method.fit((X, y)).scores((Xq, yq))
        elapsed = time.perf_counter() - t0
        if caught:
            notes = "not converged: " + str(caught[0].message).split(";")[0]
        if ref is None:
            ref = S
        rho = spearman_rows(S, ref)
        err = float((S - ref).norm() / ref.norm())
        rows.append((name, elapsed, elapsed / fb, rho, err, notes))
        print(
            f"{name:30s} {elapsed:7.2f}s x{elapsed / fb:8.0f} rho {rho:.3f} err {err:.2e} {notes}"
        )

    cpu = platform.processor() or platform.machine()
    flag = " --quick" if args.quick else ""
    lines = [
        "## Influence-function solvers (digits MLP)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_influence.py{flag}`  ",
        f"Machine: {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, no GPU; shared with other jobs, so times are "
        "indicative.  ",
        f"Setup: digits, MLP 64-64-10 (P = {task.num_params}), {n_train} train x {n_query} "
        f"queries, GGN curvature, absolute damping λ = {lam}, batch size {batch}; plain "
        f"forward+backward over the {n_train} training examples = {fb * 1e3:.1f} ms.",
        "",
        "| solver | fit + scores (s) | × fwd+bwd | Spearman vs exact | rel. error | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, t, ratio, rho, err, notes in rows:
        lines.append(f"| {name} | {t:.2f} | {ratio:,.0f} | {rho:.3f} | {err:.2e} | {notes} |")
    lines += [
        "",
        "Spearman is per query over the 1000 training examples, averaged over queries; the "
        "reference is the exact damped-GGN solve. K-FAC/EK-FAC approximate the GGN layer by "
        "layer; DataInf uses the per-layer empirical Fisher with a swapped inverse and mean, so "
        "neither is expected to reach the reference.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines).encode()
    atomic_write(out, lambda fh: fh.write(text))  # temp file + rename: never half-written
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
