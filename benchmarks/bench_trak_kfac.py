"""K-FAC / EK-FAC, TRAK and representer points on digits: time, and LDS as a quality check.

Timing: scikit-learn digits, MLP 64-64-10 (``tda.train_model``), 1000 training examples
x 100 test queries; each measurement is the wall time divided by one plain
forward+backward pass of the mean loss over the 1000 training examples. K-FAC/EK-FAC are
also timed on LeNet (8x8 digits, two Conv2d + three Linear layers).

Quality (``--lds``): the linear datamodeling score (METHODS.md §3) against 50 subset
models (alpha = 0.5, margin measurement) for TRAK with M = 1, 4, 8 recipe-trained models
(random halves) and M = 8 on all data, representer points, Grad-Dot and EK-FAC
influence on the single model.

The K-FAC / EK-FAC steps time the solver objects (``tda.solvers.KFAC()`` / ``EKFAC()``)
fitted on a ``Curvature`` (GGN of the training source) and applied to gradient rows; the
methods are built from registry configurations (``tda.methods.from_config``).

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
from tdakit.data import load_digits
from tdakit.data.sources import as_source
from tdakit.features import batch_gradients
from tdakit.models import MLP, LeNet
from tdakit.preconditioners import EKFAC, KFAC, Curvature
from tdakit.training import train_model

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


def fit_kfac(task: tda.Task, X, y, eigen_correction: bool = False, **kw) -> KFAC:
    """K-FAC (EK-FAC) fitted on the GGN of the mean loss over ``(X, y)``."""
    solver = EKFAC() if eigen_correction else KFAC()
    return solver.fit(Curvature(task, as_source((X, y), "train"), "ggn", **kw))


def gradient_features(task: tda.Task, X, y, batch_size: int = 128) -> torch.Tensor:
    """``[N, P]`` per-example training-loss gradients, batch by batch."""
    out = torch.empty(len(X), task.num_params, dtype=task.dtype, device=task.device)
    for b in as_source((X, y), "train").batches(task, batch_size):
        batch_gradients(task, b.inputs, b.targets, out=out[b.start : b.stop], start=b.start)
    return out


def method(config: dict, task: tda.Task, **objects) -> tda.AttributionMethod:
    return tda.methods.from_config(config, task, **objects)


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
    trak, representer = {"method": "trak"}, {"method": "representer"}
    # warm-up on a few examples (first calls of torch.func transforms are slow)
    fit_kfac(task, X[:16], y[:16], eigen_correction=True, **kw)
    method(trak, task, checkpoints=[model]).fit((X[:16], y[:16])).scores((Xq[:2], yq[:2]))
    method(representer, task).fit((X[:16], y[:16])).scores((Xq[:2], yq[:2]))
    kfac = add("MLP K-FAC fit", lambda: fit_kfac(task, X, y, **kw))
    add("MLP EK-FAC fit", lambda: fit_kfac(task, X, y, eigen_correction=True, **kw))
    G = gradient_features(task, X, y)
    add("MLP K-FAC apply to 1000 gradients", lambda: kfac.apply(G))
    add(
        "MLP TRAK M=1 (k=512) fit + scores",
        lambda: method(trak, task, checkpoints=[model]).fit((X, y)).scores((Xq, yq)),
    )
    add(
        "MLP representer fit + scores",
        lambda: method(representer, task).fit((X, y)).scores((Xq, yq)),
    )
    Xi = X.reshape(-1, 1, 8, 8)
    lenet = LeNet(1, 10, image_size=8)
    train_model(lenet, Xi, y, epochs=5, lr=0.05, seed=0, progress=False)
    lt = tda.Task(lenet)
    fb_lenet = forward_backward_time(lenet, Xi, y)
    add("LeNet K-FAC fit", lambda: fit_kfac(lt, Xi, y, **kw), fb_lenet)
    add("LeNet EK-FAC fit", lambda: fit_kfac(lt, Xi, y, eigen_correction=True, **kw), fb_lenet)
    return rows, fb, task.num_params, fb_lenet


def lds_rows(X, y, Xq, yq) -> list[tuple[str, float, tuple[float, float]]]:
    from tdakit.groundtruth import subset_retraining
    from tdakit.training import TrainingRecipe

    recipe = TrainingRecipe("mlp", model_kwargs={"hidden": (64,)}, epochs=30, lr=0.05)
    truth = subset_retraining(recipe, (X, y), (Xq, yq), n_subsets=50, measurement="margin")
    model = recipe.train(X, y, init_seed=0, batch_seed=0)
    task = tda.Task(model, measurement="margin")
    configs: dict[str, tuple[dict, dict]] = {}  # name -> (registry config, runtime objects)
    for m in (1, 4, 8):
        configs[f"TRAK M={m} (halves)"] = (
            {"method": "trak", "n_models": m, "subset": "half"},
            {"recipe": recipe},
        )
    configs["TRAK M=8 (full data)"] = ({"method": "trak", "n_models": 8}, {"recipe": recipe})
    configs["representer points"] = ({"method": "representer"}, {})
    configs["Grad-Dot"] = ({"method": "grad_dot"}, {})
    configs["EK-FAC influence (λ=1e-2)"] = (
        {"method": "influence", "solver": "ekfac", "damping": 1e-2},
        {},
    )
    rows = []
    for name, (config, objects) in configs.items():
        S = method(config, task, **objects).fit((X, y)).scores((Xq, yq))
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
