"""Reliability study (issue G): attribution scores as random variables over training runs.

For a 3-class subset of Fashion-MNIST (MLP and a small CNN) and of digits (MLP), with 30,
60 and 150 training examples:

1. The retraining reference: 10 runs (initialisation and batch-order seeds both varied),
   each the average over its last 5 checkpoints, for Grad-Dot, Grad-Cos, an influence
   function (EK-FAC), TRAK and a one-step further-training baseline; and leave-one-out
   ground truth over the same 10 seed pairs. Per method: the fraction of reliable pairs,
   the variance with only the initialisation varied versus only the batch order, and the
   agreement of the estimate's distribution with the ground truth's (Pearson/Spearman of
   mean, sd, SNR; mean per-pair KS distance).
2. Cheap samplers against the retraining verdict on the same pairs: checkpoints of one run,
   seeded further training of the final model, and a K-FAC Laplace posterior, at 3 and 5
   samples: precision, recall and F1 of the reliable flag, Spearman of the SNR, and the
   cost as a multiple of one attribution (wall time, same run).

Usage: python benchmarks/bench_reliability.py [--quick] [--configs fashion:mlp ...]
    [--sizes 30 60 150] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import tdakit as tda
from tdakit.data import load_digits, load_fashion_mnist
from tdakit.reliability import (
    Checkpoints,
    Drawn,
    FurtherTraining,
    Laplace,
    Retraining,
    agreement,
    loo_distribution,
    score_distribution,
)
from tdakit.storage.fileio import atomic_write

torch.set_num_threads(2)

METHODS = {
    "Grad-Dot": {"method": "grad_dot"},
    "Grad-Cos": {"method": "grad_cos"},
    "Influence (EK-FAC)": {"method": "influence", "solver": "ekfac", "damping": 0.01},
    "TRAK": {"method": "trak", "projection": 64},
}


def subset(split, classes=(0, 1, 2), n: int = 30, nq: int = 8, seed: int = 0):
    keep = torch.isin(split.y_train, torch.tensor(classes))
    X, y = split.X_train[keep], split.y_train[keep]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(X), generator=g)[:n]
    keep_q = torch.isin(split.y_test, torch.tensor(classes))
    return (X[idx].double(), y[idx]), (
        split.X_test[keep_q][:nq].double(),
        split.y_test[keep_q][:nq],
    )


def recipe_for(model: str, shape) -> tda.TrainingRecipe:
    name = "lenet" if model == "cnn" else "mlp"
    kwargs = {} if model == "cnn" else {"hidden": (16,)}
    return tda.TrainingRecipe(
        name,
        model_kwargs=kwargs,
        in_shape=tuple(shape),
        num_classes=3,
        epochs=20,
        lr=0.05,
        batch_size=10,
        checkpoint_every=1,
    )


def method(task, name, config, checkpoints=None):
    objects = {"checkpoints": checkpoints or [task.model]} if config["method"] == "trak" else {}
    return tda.from_config({**config, "progress": False}, task, **objects)


def one_step(recipe, model, train, queries, executor):
    """The further-training estimate after one full-batch step from ``model``."""
    r = tda.groundtruth.further_training(
        recipe,
        model,
        train,
        queries,
        t=[1],
        unit="step",
        seeds=[0],
        executor=executor,
        lr_scale=1.0,
    )
    return r.scores[0]


def study(dataset: str, model: str, n: int, executor, quick: bool) -> dict:
    split = (
        load_digits(seed=0)
        if dataset == "digits"
        else load_fashion_mnist(n_train=3000, n_test=500, seed=0)
    )
    train, queries = subset(split, n=n, nq=4 if quick else 8)
    recipe = recipe_for(model, train[0].shape[1:])
    S = 3 if quick else 10
    t0 = time.perf_counter()
    final = recipe.train(*train, init_seed=0, batch_seed=0)
    task = tda.Task(final)
    reference = Drawn(
        list(Retraining(recipe, S, vary="both", last_k=5, executor=executor).draw(task, train))
    )
    out: dict = {"dataset": dataset, "model": model, "n": n, "samples": S, "methods": {}}
    pairs = [(s.init_seed, s.batch_seed) for s in reference.samples]
    loo = loo_distribution(
        recipe, train, queries, pairs=pairs, executor=executor, keep_samples=True
    )
    out["loo_fraction_reliable"] = loo.fraction_reliable
    init = Drawn(list(Retraining(recipe, S, vary="init", executor=executor).draw(task, train)))
    batch = Drawn(list(Retraining(recipe, S, vary="batch", executor=executor).draw(task, train)))
    cheap = {
        "checkpoints (3)": Checkpoints(reference.samples[0].checkpoints[-3:]),
        "checkpoints (5)": Checkpoints(reference.samples[0].checkpoints[-5:]),
        "further training (3)": FurtherTraining(
            recipe, 3, steps=1, lr_scale=1.0, executor=executor
        ),
        "further training (5)": FurtherTraining(
            recipe, 5, steps=1, lr_scale=1.0, executor=executor
        ),
        "Laplace (3)": Laplace(3),
        "Laplace (5)": Laplace(5),
    }
    for name, config in METHODS.items():
        m = method(task, name, config)
        t = time.perf_counter()
        m.fit(train).scores(queries)
        single = time.perf_counter() - t
        dist = score_distribution(m, reference, train, queries, keep_samples=True)
        row = {"fraction_reliable": dist.fraction_reliable, "single_seconds": single}
        row["agreement_with_loo"] = {
            k: v for k, v in agreement(loo, dist).items() if isinstance(v, float)
        }
        row["ks_to_loo"] = float(agreement(loo, dist)["ks"].mean())
        vi = score_distribution(m, init, train, queries).sd.pow(2).mean()
        vb = score_distribution(m, batch, train, queries).sd.pow(2).mean()
        row["variance_init"], row["variance_batch"] = float(vi), float(vb)
        row["cheap"] = {}
        for cname, sampler in cheap.items():
            t = time.perf_counter()
            est = score_distribution(m, sampler, train, queries)
            cost = (time.perf_counter() - t) / single
            a = agreement(dist, est)
            row["cheap"][cname] = {
                "precision": a["precision"],
                "recall": a["recall"],
                "f1": a["f1"],
                "spearman_snr": a["spearman_snr"],
                "cost_x": cost,
                "fraction_reliable": est.fraction_reliable,
            }
        out["methods"][name] = row
        print(
            json.dumps(
                {
                    "dataset": dataset,
                    "model": model,
                    "n": n,
                    "method": name,
                    **{k: v for k, v in row.items() if k != "cheap"},
                }
            ),
            flush=True,
        )
    # the one-step further-training estimate, over the same retrained models
    acc = tda.reliability.Accumulator(keep_samples=True)
    for s in reference.samples:
        model_s = recipe.materialise(0, train[0], train[1], s.states[-1])
        acc.add(one_step(recipe, model_s, train, queries, executor))
    ft = acc.result()
    out["methods"]["Further training (1 step)"] = {
        "fraction_reliable": ft.fraction_reliable,
        "agreement_with_loo": {k: v for k, v in agreement(loo, ft).items() if isinstance(v, float)},
    }
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/reliability.json")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["fashion:mlp", "fashion:cnn", "digits:mlp"],
        help="dataset:model pairs (fashion or digits; mlp or cnn)",
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="training-set sizes")
    parser.add_argument(
        "--render", nargs="+", help="print Markdown tables of results files and exit"
    )
    args = parser.parse_args()
    if args.render:
        print(render(args.render))
        return
    executor = tda.Executor(
        backend="local", workers=2, progress=False, cache_dir="benchmarks/results/cache-reliability"
    )
    configs = [tuple(c.split(":")) for c in args.configs]
    sizes = args.sizes or ([30] if args.quick else [30, 60, 150])
    t0 = time.perf_counter()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    results: list[dict] = []
    for d, m in configs:
        for n in sizes:
            results.append(study(d, m, n, executor, args.quick))
            # Written after every study (atomically), so an interrupted run keeps its results.
            meta = {
                "seconds": time.perf_counter() - t0,
                "load": os.getloadavg(),
                "quick": args.quick,
                "complete": len(results) == len(configs) * len(sizes),
            }
            payload = json.dumps({"meta": meta, "results": results}, indent=1).encode()
            atomic_write(Path(args.out), lambda f, b=payload: f.write(b))
    print(f"done in {time.perf_counter() - t0:.0f} s -> {args.out}")


def _load(load: list[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def render(paths: list[str]) -> str:
    """Markdown tables of one or more results files (``--render FILE ...``)."""
    out, results = [], []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        meta = data["meta"]
        results += data["results"]
        out.append(
            f"{path}: {meta['seconds']:.0f} s wall, load average at the end "
            f"{_load(meta['load'])}, quick={meta['quick']}"
            + ("." if meta.get("complete", True) else " (interrupted: the studies in it only).")
        )
    out += [
        "",
        "### Reliable pairs, variance sources and agreement with leave-one-out",
        "",
        "| data | model | N | method | reliable pairs | var init / var batch | "
        "Spearman μ vs LOO | Spearman σ vs LOO | Spearman SNR vs LOO | KS to LOO |",
        "|---" * 10 + "|",
    ]
    for r in results:
        out.append(
            f"| {r['dataset']} | {r['model']} | {r['n']} | leave-one-out | "
            f"{r['loo_fraction_reliable']:.3f} | | | | | |"
        )
        for name, m in r["methods"].items():
            a = m.get("agreement_with_loo", {})
            ratio = (
                m["variance_init"] / m["variance_batch"]
                if m.get("variance_batch")
                else float("nan")
            )
            out.append(
                f"| | | | {name} | {m['fraction_reliable']:.3f} | {ratio:.2f} | "
                f"{a.get('spearman_mean', float('nan')):.2f} | "
                f"{a.get('spearman_sd', float('nan')):.2f} | "
                f"{a.get('spearman_snr', float('nan')):.2f} | "
                f"{m.get('ks_to_loo', float('nan')):.2f} |"
            )
    out += [
        "",
        "### Cheap samplers against the retraining verdict",
        "",
        "| data | model | N | method | sampler | precision | recall | F1 | Spearman SNR | "
        "cost (× one attribution) |",
        "|---" * 10 + "|",
    ]
    for r in results:
        for name, m in r["methods"].items():
            for sampler, c in m.get("cheap", {}).items():
                out.append(
                    f"| {r['dataset']} | {r['model']} | {r['n']} | {name} | {sampler} | "
                    f"{c['precision']:.2f} | {c['recall']:.2f} | {c['f1']:.2f} | "
                    f"{c['spearman_snr']:.2f} | {c['cost_x']:.1f} |"
                )
    return "\n".join([*out, "", *summary(results)])


def summary(results: list[dict]) -> list[str]:
    """Per cheap sampler, medians over every (study, method) and how often the goal is met."""
    by: dict[str, list[dict]] = {}
    for r in results:
        for m in r["methods"].values():
            for sampler, c in m.get("cheap", {}).items():
                by.setdefault(sampler, []).append(c)
    out = [
        "### Cheap samplers: summary over every study and method",
        "",
        "| sampler | median precision | median recall | median F1 | median Spearman SNR | "
        "median cost (×) | F1 ≥ 0.8 | F1 ≥ 0.8 at ≤ 3× |",
        "|---" * 8 + "|",
    ]
    for sampler, cs in by.items():
        med = {k: float(np.nanmedian([c[k] for c in cs])) for k in cs[0]}
        good = sum(c["f1"] >= 0.8 for c in cs)
        cheap = sum(c["f1"] >= 0.8 and c["cost_x"] <= 3 for c in cs)
        out.append(
            f"| {sampler} | {med['precision']:.2f} | {med['recall']:.2f} | {med['f1']:.2f} | "
            f"{med['spearman_snr']:.2f} | {med['cost_x']:.1f} | {good} of {len(cs)} | "
            f"{cheap} of {len(cs)} |"
        )
    return out


if __name__ == "__main__":
    main()
