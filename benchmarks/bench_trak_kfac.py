"""K-FAC / EK-FAC, TRAK and representer points on digits: time, and LDS as a quality check.

Timing: scikit-learn digits, MLP 64-64-10 (``tda.train_model``), 1000 training examples
x 100 test queries; each measurement is the wall time divided by one plain
forward+backward pass of the mean loss over the 1000 training examples. K-FAC/EK-FAC are
also timed on LeNet (8x8 digits, two Conv2d + three Linear layers).

Quality (``--lds``): the linear datamodeling score (METHODS.md §3) against 50 subset
models (alpha = 0.5, margin measurement) for TRAK with M = 1, 4, 8 recipe-trained models
(random halves) and M = 8 on all data, representer points, Grad-Dot and EK-FAC
influence on the single model.

Run: .venv/bin/python benchmarks/bench_trak_kfac.py [--lds] [--out docs/benchmarks-trak-kfac.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import tdakit as tda
from bench_influence import forward_backward_time
from tdakit.curvature.kfac import KFAC
from tdakit.data import load_digits
from tdakit.features.grads import gradient_features
from tdakit.models import MLP, LeNet
from tdakit.train import train_model

NOTES = [
    "Notes: K-FAC back-propagates the C = 10 columns of the loss Hessian's square root per "
    "example (one vmapped backward) and EK-FAC makes a second pass, so ratios of a few "
    "hundred forward+backward passes are expected; differences below ~2x between rows are "
    "within the noise of this shared machine. TRAK's LDS rises with the ensemble size M, "
    "and models trained on random halves beat models trained on all data at M = 8 in "
    "this benchmark. Every method here attributes the margin.",
]


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def timing_rows(X, y, Xq, yq) -> tuple[list[tuple[str, float, float]], float, int]:
    model = MLP(64, 10, hidden=(64,))
    train_model(model, X, y, epochs=30, lr=0.05, seed=0, progress=False)
    task = tda.Task(model)
    fb = forward_backward_time(model, X, y)
    rows = []

    def add(name: str, fn, base: float = fb) -> object:
        t, out = timed(fn)
        rows.append((name, t, t / base))
        print(f"{name:45s} {t:8.3f}s  x{t / base:8.0f}")
        return out

    kw = dict(damping=1e-2, batch_size=256)
    # warm-up on a few examples (first calls of torch.func transforms are slow)
    KFAC(task, eigen_correction=True, **kw).fit(X[:16], y[:16])
    tda.TRAK(task, checkpoints=[model]).fit((X[:16], y[:16])).scores((Xq[:2], yq[:2]))
    tda.RepresenterPoints(task).fit((X[:16], y[:16])).scores((Xq[:2], yq[:2]))
    kfac = add("MLP K-FAC fit", lambda: KFAC(task, **kw).fit(X, y))
    add("MLP EK-FAC fit", lambda: KFAC(task, eigen_correction=True, **kw).fit(X, y))
    G = gradient_features(task, X, y)
    add("MLP K-FAC apply to 1000 gradients", lambda: kfac.apply(G))
    add(
        "MLP TRAK M=1 (k=512) fit + scores",
        lambda: tda.TRAK(task, checkpoints=[model]).fit((X, y)).scores((Xq, yq)),
    )
    add(
        "MLP representer fit + scores",
        lambda: tda.RepresenterPoints(task).fit((X, y)).scores((Xq, yq)),
    )
    Xi = X.reshape(-1, 1, 8, 8)
    lenet = LeNet(1, 10, image_size=8)
    train_model(lenet, Xi, y, epochs=5, lr=0.05, seed=0, progress=False)
    lt = tda.Task(lenet)
    fb_lenet = forward_backward_time(lenet, Xi, y)
    add("LeNet K-FAC fit", lambda: KFAC(lt, **kw).fit(Xi, y), fb_lenet)
    add("LeNet EK-FAC fit", lambda: KFAC(lt, eigen_correction=True, **kw).fit(Xi, y), fb_lenet)
    return rows, fb, task.num_params, fb_lenet


def lds_rows(X, y, Xq, yq) -> list[tuple[str, float, tuple[float, float]]]:
    from tdakit.groundtruth.recipe import TrainingRecipe
    from tdakit.groundtruth.subsets import subset_retraining

    recipe = TrainingRecipe("mlp", model_kwargs={"hidden": (64,)}, epochs=30, lr=0.05)
    truth = subset_retraining(recipe, (X, y), (Xq, yq), n_subsets=50, measurement="margin")
    model = recipe.train(X, y, init_seed=0, batch_seed=0)
    task = tda.Task(model, measurement="margin")
    methods = {}
    for m in (1, 4, 8):
        methods[f"TRAK M={m} (halves)"] = lambda m=m: tda.TRAK(
            task, recipe=recipe, n_models=m, subset="half"
        )
    methods["TRAK M=8 (full data)"] = lambda: tda.TRAK(task, recipe=recipe, n_models=8)
    methods["representer points"] = lambda: tda.RepresenterPoints(task)
    methods["Grad-Dot"] = lambda: tda.GradDot(task)
    methods["EK-FAC influence (λ=1e-2)"] = lambda: tda.InfluenceFunction(
        task, solver="ekfac", damping=1e-2
    )
    rows = []
    for name, make in methods.items():
        S = make().fit((X, y)).scores((Xq, yq))
        res = tda.metrics.lds(S, truth.masks, truth.losses, measurement="margin")
        rows.append((name, res.value, res.ci))
        print(f"{name:30s} LDS {res.value:.3f} {res.ci}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lds", action="store_true", help="also run the LDS quality check")
    ap.add_argument("--out", default="docs/benchmarks-trak-kfac.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_digits(seed=0)
    X, y = data.X_train[:1000], data.y_train[:1000]
    Xq, yq = data.X_test[:100], data.y_test[:100]
    rows, fb, P, fb_lenet = timing_rows(X, y, Xq, yq)
    cpu = platform.processor() or platform.machine()
    flag = " --lds" if args.lds else ""
    lines = [
        "## K-FAC / EK-FAC, TRAK and representer points (digits)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_trak_kfac.py{flag}`  ",
        f"Machine: {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, no GPU; shared with other jobs, so times are "
        "indicative.  ",
        f"Setup: digits, MLP 64-64-10 (P = {P}) and LeNet (8x8), 1000 train x 100 queries; "
        f"plain forward+backward over the 1000 training examples: MLP {fb * 1e3:.1f} ms, "
        f"LeNet {fb_lenet * 1e3:.1f} ms. K-FAC damping 1e-2, batch size 256.",
        "",
        "| step | time (s) | × fwd+bwd |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {t:.3f} | {ratio:,.0f} |" for name, t, ratio in rows]
    if args.lds:
        lines += [
            "",
            "LDS (50 subsets, α = 0.5, one model each, margin measurement, 100 queries; "
            "95% bootstrap CI):",
            "",
            "| method | LDS | CI |",
            "|---|---:|---|",
        ]
        lines += [
            f"| {name} | {v:.3f} | [{ci[0]:.3f}, {ci[1]:.3f}] |"
            for name, v, ci in lds_rows(X, y, Xq, yq)
        ]
    lines += ["", *NOTES]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
