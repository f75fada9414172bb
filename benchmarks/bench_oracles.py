"""Retraining oracles: wall time with 1 vs 2 local workers, and method quality against them.

1. Timing: the leave-one-out and subset oracles on the digits MLP with 1 and 2 local worker
   processes (no cache), and the speed-up ratio.
2. Quality: LDS (M subsets, alpha = 0.5, R = 1) and LOO correlation (paired LOO, one seed)
   for every available method, on the digits MLP and a Fashion-MNIST subset.
3. Further training (digits MLP): cosine (and Spearman) between the gold standard and
   Grad-Dot / Grad-Cos / influence, as a function of the amount of further training t.

Ground truth is cached (``--cache``), so a rerun only recomputes what changed. Oracles run
through ``tdakit.execution`` (``Executor``, ``Job``) with recipes from ``tdakit.training``;
methods are built from registry configurations (``tda.methods.from_config``).
Run: .venv/bin/python benchmarks/bench_oracles.py [--quick] [--out docs/benchmarks-groundtruth.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import tdakit as tda
from tdakit import metrics
from tdakit.data import load_digits, load_fashion_mnist
from tdakit.execution import Executor, Job
from tdakit.groundtruth import (
    further_training,
    leave_one_out,
    seed_ensemble,
    subset_retraining,
)
from tdakit.training import TrainingRecipe

DIGITS = TrainingRecipe(
    "mlp",
    model_kwargs={"hidden": (32,)},
    lr=0.05,
    momentum=0.9,
    weight_decay=1e-3,
    epochs=15,
    batch_size=64,
    checkpoint_every=3,
)
FASHION = TrainingRecipe(
    "mlp",
    model_kwargs={"hidden": (64,)},
    lr=0.05,
    momentum=0.9,
    weight_decay=1e-3,
    epochs=10,
    batch_size=64,
    checkpoint_every=2,
)


def burn(seed: int, n: int = 200, steps: int = 2000) -> float:
    """A fixed single-threaded compute load (calibrates how many cores are really free)."""
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        a = torch.tanh(a @ a * 0.01)
    return float(a.sum())


def timing(split, k: int, m: int, ray: bool) -> list[str]:
    train, queries = (split.X_train, split.y_train), (split.X_test[:20], split.y_test[:20])
    removed = torch.randperm(len(split.X_train), generator=torch.Generator().manual_seed(1))[:k]
    rows = []
    setups = [("local", 1), ("local", 2)] + ([("ray", 2)] if ray else [])
    for name, run in (
        (
            "calibration: 8 x fixed matmul loop",
            lambda ex: ex.run([Job(burn, (s,)) for s in range(8)]),
        ),
        (
            f"LOO, {k} removals + full run",
            lambda ex: leave_one_out(DIGITS, train, queries, removed=removed, executor=ex),
        ),
        (
            f"subsets, M={m}, alpha=0.5",
            lambda ex: subset_retraining(DIGITS, train, queries, n_subsets=m, executor=ex),
        ),
    ):
        times = {}
        for backend, workers in setups:
            t0 = time.perf_counter()
            run(Executor(backend=backend, workers=workers, progress=False))
            times[(backend, workers)] = time.perf_counter() - t0
        one, two = times[("local", 1)], times[("local", 2)]
        extra = f" | {times[('ray', 2)]:.1f}" if ray else ""
        rows.append(f"| {name} | {one:.1f} | {two:.1f} | {one / two:.2f}{extra} |")
    return rows


def methods(task: tda.Task, run, ensemble, recipe: TrainingRecipe, big: bool) -> dict:
    """Every available method, fitted later on the same training data: built from its
    registry configuration, with the objects a configuration leaves out (checkpoints)."""
    influence = (
        {"method": "influence", "solver": "ekfac", "damping": 1e-3}
        if big
        else {"method": "influence", "solver": "exact", "curvature": "ggn", "damping": 1e-3}
    )
    specs = {
        "Grad-Dot": ({"method": "grad_dot"}, {}),
        "Grad-Cos": ({"method": "grad_cos"}, {}),
        "TracIn-CP": (
            {"method": "tracin", "lrs": list(run.checkpoint_lrs)},
            {"checkpoints": run.checkpoints},
        ),
        "Representation sim.": ({"method": "representation_similarity"}, {}),
        "Random": ({"method": "random", "seed": 0}, {}),
        "Influence (EK-FAC)" if big else "Influence (exact GGN)": (influence, {}),
        f"TRAK ({len(ensemble.states)} models)": (
            {"method": "trak", "projection": 512},
            {"checkpoints": ensemble.states},
        ),
        "Representer points": ({"method": "representer", "l2": 1e-3}, {}),
    }
    return {
        label: tda.methods.from_config(config, task, **objects)
        for label, (config, objects) in specs.items()
    }


def quality(name, split, recipe, n_query, k, m, n_models, executor) -> tuple[list[str], dict]:
    train, queries = (
        (split.X_train, split.y_train),
        (split.X_test[:n_query], split.y_test[:n_query]),
    )
    n = len(split.X_train)
    run = recipe.run(*train, init_seed=0, batch_seed=0)
    model = run.model
    acc = float((model(split.X_test).argmax(1) == split.y_test).float().mean())
    task = tda.Task(model)
    removed = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:k]
    t0 = time.perf_counter()
    loo = leave_one_out(recipe, train, queries, removed=removed, executor=executor)
    subsets = subset_retraining(
        recipe, train, queries, n_subsets=m, fraction=0.5, executor=executor
    )
    ensemble = seed_ensemble(recipe, train, n_models=n_models, executor=executor)
    t_gt = time.perf_counter() - t0
    rows, scores = [], {}
    for label, method in methods(task, run, ensemble, recipe, big=task.num_params > 5000).items():
        t1 = time.perf_counter()
        try:
            S = method.fit(train).scores(queries)
        except Exception as err:  # report, keep benchmarking the others
            rows.append(f"| {name} | {label} | failed: {type(err).__name__}: {err} | | |")
            continue
        t_m = time.perf_counter() - t1
        scores[label] = S
        lds = metrics.lds(S, subsets.masks, subsets.losses)
        corr = metrics.loo_correlation(S, loo.scores, indices=loo.removed)
        rows.append(
            f"| {name} | {label} | {lds.value:.3f} [{lds.ci[0]:.3f}, {lds.ci[1]:.3f}] | "
            f"{corr.value:.3f} (Spearman {corr.details['spearman']:.3f}) | {t_m:.1f} |"
        )
    info = {
        "accuracy": acc,
        "n_train": n,
        "n_query": n_query,
        "K": k,
        "M": m,
        "t_gt": t_gt,
        "params": task.num_params,
        "scores": scores,
        "task": task,
    }
    return rows, info


def further_rows(split, info, k: int, seeds: int, ts: list[int], executor) -> list[str]:
    train = (split.X_train, split.y_train)
    nq = info["n_query"]
    queries = (split.X_test[:nq], split.y_test[:nq])
    model = info["task"].model
    removed = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(2))[:k]
    rows = []
    for mechanism, centre in (("drop", False), ("drop", True), ("downweight", False)):
        gold = further_training(
            DIGITS,
            model,
            train,
            queries,
            removed=removed,
            t=ts,
            unit="epoch",
            mechanism=mechanism,
            seeds=seeds,
            lr_scale=0.1,
            centre=centre,
            executor=executor,
        )
        for label, S in info["scores"].items():
            if not label.startswith(("Grad-Dot", "Grad-Cos", "Influence")):
                continue
            agree = metrics.further_training_agreement(S[:, removed], gold.scores, t=ts)
            cos = " | ".join(f"{float(c):.2f}" for c in agree.details["cosine"])
            spear = " | ".join(f"{float(c):.2f}" for c in agree.details["spearman"])
            name = mechanism + (", centred" if centre else "")
            rows.append(f"| {name} | {label} | cosine | {cos} |")
            rows.append(f"| {name} | {label} | Spearman | {spear} |")
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        cpu = model
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python "
        f"{platform.python_version()}, load average at start {load:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--ray", action="store_true", help="also time the Ray backend")
    parser.add_argument("--timing-only", action="store_true", help="only the wall-time table")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/tdakit-bench-oracles"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same per-process budget as each worker
    q = args.quick
    start = time.perf_counter()
    executor = Executor(backend="local", workers=2, cache_dir=args.cache, progress=True)
    digits = load_digits(test_size=0.25, seed=0)
    lines = [
        f"Machine: {machine()}",
        "",
        "Command: `.venv/bin/python benchmarks/bench_oracles.py"
        + (" --quick" if q else "")
        + (" --ray" if args.ray else "")
        + "`",
        "",
        "Timing runs without a cache; quality sections reuse the cache in --cache.",
    ]

    print("timing ...", file=sys.stderr)
    lines += [
        "## Wall time of the oracles (digits MLP 64-32-10, 15 epochs, no cache)",
        "",
        "| oracle | 1 worker (s) | 2 workers (s) | ratio"
        + (" | Ray, 2 CPUs (s)" if args.ray else "")
        + " |",
        "|---|---|---|---" + ("|---" if args.ray else "") + "|",
    ]
    lines += timing(digits, 6 if q else 48, 6 if q else 48, args.ray)
    if args.timing_only:
        print("\n".join(lines))
        return

    print("quality: digits ...", file=sys.stderr)
    header = [
        "| data | method | LDS [95% CI] | LOO Pearson | method time (s) |",
        "|---|---|---|---|---|",
    ]
    rows_d, info_d = quality(
        "digits",
        digits,
        DIGITS,
        20 if q else 50,
        20 if q else 100,
        10 if q else 50,
        2 if q else 5,
        executor,
    )
    print("quality: fashion-mnist ...", file=sys.stderr)
    fashion = load_fashion_mnist(n_train=300 if q else 2000, n_test=100 if q else 500, seed=0)
    rows_f, info_f = quality(
        "fashion-mnist",
        fashion,
        FASHION,
        20 if q else 50,
        20 if q else 60,
        10 if q else 50,
        2 if q else 5,
        executor,
    )
    lines += ["", "## LDS and LOO correlation", ""]
    for info, label in ((info_d, "digits"), (info_f, "fashion-mnist")):
        lines.append(
            f"- {label}: N = {info['n_train']}, {info['params']} parameters, test accuracy "
            f"{info['accuracy']:.3f}; {info['n_query']} test queries; LDS with M = {info['M']}, "
            f"alpha = 0.5, R = 1, measurement = loss; paired LOO (one seed) on K = {info['K']} "
            f"random training examples; ground truth took {info['t_gt']:.0f} s (2 workers)."
        )
    lines += ["", *header, *rows_d, *rows_f]

    print("further training ...", file=sys.stderr)
    ts = [1, 2] if q else [1, 2, 4, 8]
    k, seeds = (10, 2) if q else (50, 5)
    lines += [
        "",
        f"## Further-training agreement (digits MLP; K = {k} left-out examples, "
        f"{seeds} seeds, lr = 0.1 x the original, t in epochs)",
        "",
        "| mechanism | method | statistic | " + " | ".join(f"t={t}" for t in ts) + " |",
        "|---|---|---|" + "---|" * len(ts),
    ]
    lines += further_rows(digits, info_d, k, seeds, ts, executor)
    lines += ["", f"Total wall time: {time.perf_counter() - start:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"tdakit at {sha.stdout.strip() or '?'}", file=sys.stderr)
    main()
