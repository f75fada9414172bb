"""Information-theoretic attribution against Grad-Dot, TracIn, influence (EK-FAC, CG) and
TRAK on offline data (issue F). Sections (``--sections``, default all):

- ``counterfactual``: remove each method's top-k (k = 10, 50, 100) for a query, retrain
  with the same seeds, measure the change of the query's loss, its predicted-class
  probability and its predictive entropy (digits MLP); random-k as baseline.
- ``retrieval``: a 3x3 trigger on 1 % of Fashion-MNIST training images relabelled to
  class 0, triggered test queries: recall@50 and MRR of the poisoned images; and planted
  near-duplicates on digits: recall@10 and MRR of a query's five near-copies.
- ``coreset``: test accuracy after training on the top 5 / 10 / 20 % by each method's
  summed scores over validation queries (overall, and per class), against random subsets
  of the same size (drawn the same way).
- ``lds``: LDS (M subsets, alpha = 0.5) of single-example information loss and gain next to
  the other methods, on digits and Fashion-MNIST.
- ``scale``: build time, query latency (p50, p99) and recall@10 of FAISS exact, FAISS HNSW
  and Milvus Lite at 100 k and 1 M vectors (projected gradient features); HNSW with
  M = 16 and 32 links, each searched with efSearch 64 ... 1024.

Usage: python benchmarks/bench_information.py [--quick] [--sections ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import tdakit as tda
from tdakit import metrics
from tdakit.data import load_digits, load_fashion_mnist
from tdakit.data.transforms import add_trigger, apply_trigger
from tdakit.storage.fileio import atomic_write

torch.set_num_threads(2)


def methods(ckpts, lrs, dim: int) -> dict[str, dict]:
    """Registry configurations (plus run objects) of the compared methods."""
    return {
        "Grad-Dot": {"method": "grad_dot"},
        "TracIn": {"method": "tracin", "__objects": {"checkpoints": ckpts, "lrs": lrs}},
        "Influence (EK-FAC)": {"method": "influence", "solver": "ekfac", "damping": 0.01},
        "Influence (CG)": {
            "method": "influence",
            "solver": {"name": "cg", "max_iter": 100},
            "damping": 0.01,
        },
        "TRAK": {"method": "trak", "projection": 256, "__objects": {"checkpoints": ckpts}},
        "Information loss": {"method": "information_loss", "projection": dim},
        "Information gain": {"method": "information_gain", "projection": dim},
    }


def build(task, config):
    config = dict(config)
    objects = config.pop("__objects", {})
    return tda.from_config({**config, "progress": False}, task, **objects)


def _with_ci(name: str, result) -> dict:
    """``{name: value, name_ci: [low, high]}`` of a metric result."""
    return {name: result.value, f"{name}_ci": [float(c) for c in result.ci]}


def trained(split, hidden=(32,), epochs=12, seed=0, model="mlp"):
    recipe = tda.TrainingRecipe(
        model,
        model_kwargs={"hidden": hidden} if model == "mlp" else {},
        in_shape=tuple(split.X_train.shape[1:]),
        num_classes=split.num_classes,
        epochs=epochs,
        lr=0.05,
        batch_size=64,
        checkpoint_every=max(1, epochs // 3),
    )
    run = recipe.run(split.X_train, split.y_train, init_seed=seed, batch_seed=seed)
    return recipe, run.model.eval(), run.checkpoints[-3:], run.checkpoint_lrs[-3:]


def counterfactual(quick: bool, executor) -> list[dict]:
    split = load_digits(seed=0)
    n = 300 if quick else 600
    split.X_train, split.y_train = split.X_train[:n], split.y_train[:n]
    recipe, model, ckpts, lrs = trained(split)
    task = tda.Task(model)
    nq = 6 if quick else 15
    Xq, yq = split.X_test[:nq], split.y_test[:nq]
    ks = [10, 50] if quick else [10, 50, 100]
    rows = []
    rankings = {}
    for name, config in methods(ckpts, lrs, 64).items():
        m = build(task, config).fit((split.X_train, split.y_train))
        rankings[name] = m.top_k((Xq, yq), max(ks))[0]
        if name == "Information loss":
            sel = m.select_subset((Xq, yq), max(ks), objective="loss")
            rankings["Information loss (greedy subset)"] = torch.stack([s.indices for s in sel])
            sel = m.select_subset((Xq, yq), max(ks), objective="gain")
            rankings["Information gain (greedy subset)"] = torch.stack([s.indices for s in sel])
    for name, ranked in rankings.items():
        for k in ks:
            r = metrics.counterfactual_sensitivity(
                ranked[:, :k],
                recipe,
                split.X_train,
                split.y_train,
                Xq,
                yq,
                k=k,
                progress=False,
                executor=executor,
            )
            d = r.details
            rows.append(
                {
                    "section": "counterfactual",
                    "method": name,
                    "k": k,
                    "delta_loss": r.value,
                    "ci": list(r.ci),
                    "delta_loss_random": d["random"].value,
                    "delta_prob": d["delta_prob"],
                    "delta_prob_random": d["delta_prob_random"],
                    "delta_entropy": d["delta_entropy"],
                    "delta_entropy_random": d["delta_entropy_random"],
                    "flip_rate": d["flip_rate"],
                    "flip_rate_random": d["flip_rate_random"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def retrieval(quick: bool) -> list[dict]:
    rows = []
    n = 2000 if quick else 6000
    split = load_fashion_mnist(n_train=n, n_test=1000, seed=0)
    X, y, poisoned = add_trigger(split.X_train, split.y_train, 0.01, 0, seed=0, patch_size=3)
    split.X_train, split.y_train = X, y
    _recipe, model, ckpts, lrs = trained(split, hidden=(64,), epochs=8)
    keep = split.y_test != 0
    Xq = apply_trigger(split.X_test[keep][: 20 if quick else 50], patch_size=3)
    yq = torch.zeros(len(Xq), dtype=torch.long)  # the backdoor's target: the model's output
    task = tda.Task(model)
    for name, config in methods(ckpts, lrs, 64).items():
        m = build(task, config).fit((X, y))
        S = m.scores((Xq, yq))
        rel = poisoned.expand(len(Xq), -1)
        rows.append(
            {
                "section": "backdoor",
                "method": name,
                **_with_ci("recall@50", metrics.recall_at_k(S, rel, k=50)),
                **_with_ci("mrr", metrics.mrr(S, rel)),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    # near-duplicates on digits: five noisy copies of each of 10 training images
    d = load_digits(seed=0)
    g = torch.Generator().manual_seed(1)
    base = d.X_train[:10]
    copies = base.repeat_interleave(5, 0) + 0.05 * torch.randn(50, *base.shape[1:], generator=g)
    Xd = torch.cat([d.X_train[10:], copies])
    yd = torch.cat([d.y_train[10:], d.y_train[:10].repeat_interleave(5)])
    split = d
    split.X_train, split.y_train = Xd, yd
    _recipe, model, ckpts, lrs = trained(split)
    task = tda.Task(model)
    Xq = base + 0.05 * torch.randn(base.shape, generator=g)
    rel = torch.zeros(10, len(Xd), dtype=torch.bool)
    for q in range(10):
        rel[q, len(Xd) - 50 + 5 * q : len(Xd) - 50 + 5 * (q + 1)] = True
    for name, config in methods(ckpts, lrs, 64).items():
        m = build(task, config).fit((Xd, yd))
        S = m.scores((Xq, d.y_train[:10]))
        row = {
            "section": "duplicates",
            "method": name,
            **_with_ci("recall@10", metrics.recall_at_k(S, rel, k=10)),
            **_with_ci("mrr", metrics.mrr(S, rel)),
        }
        if name.startswith("Information"):
            for obj in ("loss", "gain"):
                if name == "Information loss":
                    sel = m.select_subset((Xq, d.y_train[:10]), 10, objective=obj)
                    dup = np.mean([float(rel[q, s.indices].sum()) for q, s in enumerate(sel)])
                    row[f"duplicates_in_greedy_{obj}_top10"] = dup
        row["duplicates_in_top10"] = float(rel.gather(1, S.topk(10).indices).sum(1).double().mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def coreset(quick: bool, executor) -> list[dict]:
    split = load_digits(seed=0)
    recipe, model, ckpts, lrs = trained(split)
    task = tda.Task(model)
    Xv, yv = split.X_test[:50], split.y_test[:50]
    Xt, yt = split.X_test[50:], split.y_test[50:]
    n = len(split.X_train)
    budgets = [int(f * n) for f in (0.05, 0.1, 0.2)]
    rows = []
    for name, config in methods(ckpts, lrs, 64).items():
        m = build(task, config).fit((split.X_train, split.y_train))
        total = m.scores((Xv, yv)).sum(0)
        for per_class in (False, True):
            r = metrics.coreset_selection(
                total,
                recipe,
                split.X_train,
                split.y_train,
                Xt,
                yt,
                budgets,
                seeds=(0,) if quick else (0, 1, 2),
                per_class=per_class,
                progress=False,
                executor=executor,
            )
            keys = ("accuracy", "accuracy_ci", "random_accuracy", "random_accuracy_ci")
            rows.append(
                {
                    "section": "coreset",
                    "method": name,
                    "rule": "per class" if per_class else "top by summed score",
                    "budgets": budgets,
                    **{key: r.details[key].tolist() for key in keys},
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def lds(quick: bool, executor) -> list[dict]:
    rows = []
    for dataset in ("digits", "fashion_mnist"):
        if dataset == "digits":
            split = load_digits(seed=0)
        else:
            split = load_fashion_mnist(n_train=1000 if quick else 2000, n_test=300, seed=0)
        recipe, model, ckpts, lrs = trained(split, epochs=10)
        task = tda.Task(model)
        Xq, yq = split.X_test[:30], split.y_test[:30]
        sub = tda.groundtruth.subset_retraining(
            recipe,
            (split.X_train, split.y_train),
            (Xq, yq),
            n_subsets=20 if quick else 50,
            executor=executor,
        )
        for name, config in methods(ckpts, lrs, 64).items():
            S = build(task, config).fit((split.X_train, split.y_train)).scores((Xq, yq))
            r = metrics.lds(S, sub.masks, sub.losses)
            rows.append(
                {
                    "section": "lds",
                    "dataset": dataset,
                    "method": name,
                    "lds": r.value,
                    "ci": list(r.ci),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _search_quality(index, Q: torch.Tensor, truth: torch.Tensor) -> dict:
    """Per-query latency (p50, p99) and recall@10 against the exact top-10 ``truth``."""
    lat, found = [], []
    for q in Q:
        t = time.perf_counter()
        ids, _ = index.search(q[None], 10)
        lat.append(time.perf_counter() - t)
        found.append(ids[0])
    recall = np.mean(
        [
            len(set(a.tolist()) & set(b.tolist())) / 10
            for a, b in zip(torch.stack(found), truth, strict=True)
        ]
    )
    return {
        "p50_ms": 1e3 * float(np.percentile(lat, 50)),
        "p99_ms": 1e3 * float(np.percentile(lat, 99)),
        "recall@10": float(recall),
    }


def scale(quick: bool) -> list[dict]:
    from tdakit.scoring.index import ExactIndex, FaissIndex, MilvusIndex

    rows = []
    dim = 64
    sizes = [100_000] if quick else [100_000, 1_000_000]
    split = load_fashion_mnist(n_train=5000, n_test=300, seed=0)
    _recipe, model, _, _ = trained(split, hidden=(32,), epochs=3)
    base = tda.GradDot(tda.Task(model), projection=dim).fit((split.X_train, split.y_train))
    feats = base.features_.T.float()
    for n in sizes:  # gradient features, augmented by small random rotations of the pool
        g = torch.Generator().manual_seed(n)
        V = feats[torch.randint(0, len(feats), (n,), generator=g)]
        V = V + 0.1 * feats.std() * torch.randn(V.shape, generator=g)
        Q = V[torch.randint(0, n, (200,), generator=g)] + 0.05 * torch.randn(200, dim, generator=g)
        exact = ExactIndex(dim)
        exact.add(torch.arange(n), V)
        truth, _ = exact.search(Q, 10)
        with tempfile.TemporaryDirectory() as tmp:
            candidates = [
                ("FAISS exact", lambda: FaissIndex(dim)),
                ("FAISS HNSW m=16", lambda: FaissIndex(dim, "hnsw", m=16)),
                ("FAISS HNSW m=32", lambda: FaissIndex(dim, "hnsw", m=32)),
                ("Milvus Lite (FLAT)", lambda: MilvusIndex(os.path.join(tmp, "v.db"), "v", dim)),
            ]
            for name, make in candidates:
                t0 = time.perf_counter()
                index = make()
                for a in range(0, n, 50_000):
                    index.add(torch.arange(a, min(a + 50_000, n)), V[a : a + 50_000])
                if isinstance(index, MilvusIndex):
                    index.commit()
                build_s = time.perf_counter() - t0
                # HNSW: one build, the recall/latency trade-off over the search breadth.
                efs = [64, 128, 256, 512, 1024] if "HNSW" in name else [None]
                for ef in efs:
                    if ef is not None:
                        index.set_ef_search(ef)
                    row = _search_quality(index, Q, truth)
                    label = name if ef is None else f"{name} (efSearch {ef})"
                    rows.append(
                        {
                            "section": "scale",
                            "index": label,
                            "n": n,
                            "dim": dim,
                            "build_s": build_s,
                            **row,
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
                if isinstance(index, MilvusIndex):
                    index.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--sections", nargs="+", default=["counterfactual", "retrieval", "coreset", "lds", "scale"]
    )
    parser.add_argument("--out", default="benchmarks/results/information.json")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--render", help="print Markdown tables of a results file and exit")
    args = parser.parse_args()
    if args.render:
        print(render(args.render))
        return
    executor = tda.Executor(
        backend="local",
        workers=args.workers,
        progress=False,
        cache_dir="benchmarks/results/cache-information",
    )
    t0 = time.perf_counter()
    rows: list[dict] = []
    for i, section in enumerate(args.sections):
        fn = {
            "counterfactual": lambda: counterfactual(args.quick, executor),
            "retrieval": lambda: retrieval(args.quick),
            "coreset": lambda: coreset(args.quick, executor),
            "lds": lambda: lds(args.quick, executor),
            "scale": lambda: scale(args.quick),
        }[section]
        rows += fn()
        meta = {
            "seconds": time.perf_counter() - t0,
            "load": os.getloadavg(),
            "quick": args.quick,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "sections": args.sections[: i + 1],
        }
        # Written after every section, atomically: an interrupted run keeps what it measured.
        payload = json.dumps({"meta": meta, "rows": rows}, indent=1).encode()
        atomic_write(Path(args.out), lambda f, b=payload: f.write(b))
    print(f"done in {meta['seconds']:.0f} s -> {args.out}")


def _head(title: str, columns: list[str]) -> list[str]:
    """A Markdown section heading and table header."""
    return [f"### {title}", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def _cell(row: dict, key: str, i: int | None = None) -> str:
    """``value [low, high]`` of ``row[key]`` (element ``i`` of a per-budget list)."""
    if key not in row:
        return "–"
    value, ci = row[key], row.get(f"{key}_ci")
    if i is not None:
        value, ci = value[i], None if ci is None else ci[i]
    return f"{value:.3f}" + ("" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


def _load(load: list[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def render(path: str) -> str:
    """Markdown tables of a results file (``--render FILE``)."""
    with open(path) as f:
        data = json.load(f)
    rows, meta = data["rows"], data["meta"]
    out = [
        f"Run: {meta['seconds']:.0f} s wall, load average at the end {_load(meta['load'])}, "
        f"torch {meta['torch']}, {meta['cpus']} CPUs, quick={meta['quick']}.",
        "",
    ]
    cf = [r for r in rows if r["section"] == "counterfactual"]
    if cf:
        out += _head(
            "Counterfactual sensitivity (digits MLP)",
            [
                *("method", "k", "Δ loss [95 % CI]", "Δ loss random", "Δ p(predicted)"),
                *("Δ p random", "Δ entropy", "flip rate", "flip rate random"),
            ],
        )
        for r in cf:
            out.append(
                f"| {r['method']} | {r['k']} | {r['delta_loss']:.3f} [{r['ci'][0]:.2f}, "
                f"{r['ci'][1]:.2f}] | {r['delta_loss_random']:.3f} | {r['delta_prob']:.3f}"
                f" | {r['delta_prob_random']:.3f} | {r['delta_entropy']:.3f} | "
                f"{r['flip_rate']:.2f} | {r['flip_rate_random']:.2f} |"
            )
        out.append("")
    tables = (
        (
            "backdoor",
            "Backdoor retrieval (Fashion-MNIST MLP, 1 % of the training images poisoned)",
            {"recall@50": "recall@50", "mrr": "MRR"},
        ),
        (
            "duplicates",
            "Planted near-duplicates (digits MLP, 5 copies per query)",
            {
                "recall@10": "recall@10",
                "mrr": "MRR",
                "duplicates_in_top10": "copies in top 10",
                "duplicates_in_greedy_loss_top10": "copies in greedy 10 (loss)",
                "duplicates_in_greedy_gain_top10": "copies in greedy 10 (gain)",
            },
        ),
    )
    for section, title, cols in tables:
        mine = [r for r in rows if r["section"] == section]
        if mine:
            out += _head(title, ["method", *cols.values()])
            for r in mine:
                out.append(f"| {r['method']} | " + " | ".join(_cell(r, c) for c in cols) + " |")
            out.append("")
    co = [r for r in rows if r["section"] == "coreset"]
    if co:
        out += _head(
            "Coreset selection (digits MLP, test accuracy [95 % CI over seeds])",
            ["method", "rule", *(f"budget {b}" for b in co[0]["budgets"])],
        )
        for r in co:
            out.append(
                f"| {r['method']} | {r.get('rule', 'top by summed score')} | "
                + " | ".join(
                    f"{_cell(r, 'accuracy', b)} (random {_cell(r, 'random_accuracy', b)})"
                    for b in range(len(r["budgets"]))
                )
                + " |"
            )
        out.append("")
    ld = [r for r in rows if r["section"] == "lds"]
    if ld:
        out += _head("LDS", ["dataset", "method", "LDS [95 % CI]"])
        for r in ld:
            out.append(
                f"| {r['dataset']} | {r['method']} | {r['lds']:.3f} "
                f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}] |"
            )
        out.append("")
    sc = [r for r in rows if r["section"] == "scale"]
    if sc:
        out += _head(
            "Retrieval at scale",
            ["index", "vectors", "build (s)", "p50 (ms)", "p99 (ms)", "recall@10"],
        )
        for r in sc:
            out.append(
                f"| {r['index']} | {r['n']:,} × {r['dim']} | {r['build_s']:.1f} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['recall@10']:.3f} |"
            )
    return "\n".join(out)


if __name__ == "__main__":
    main()
