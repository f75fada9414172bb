"""Featurisation and scoring throughput, as ratios measured in one run.

- featurisation: per-example gradient features (tdakit: ``batch_gradients`` over the
  batches of a data source, written into one ``[N, d]`` buffer, as a feature method keeps
  its training features in memory) vs a plain batched forward+backward pass of the same
  model on the same batches (target ratio >= 0.4);
- scoring: tdakit's blockwise scores (assembled from score blocks) and streaming top-k (the
  ``TopK`` accumulator) vs one plain matrix product of the same size.

Run: .venv/bin/python benchmarks/bench_features.py [--quick]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

import tdakit as tda
from tdakit.data.sources import Source, as_source
from tdakit.features import batch_gradients
from tdakit.models import MLP, LeNet, ResNet9
from tdakit.scoring import TopK, row_blocks

BlockScorer = Callable[[int, int], torch.Tensor]


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gradient_features(
    task: tda.Task,
    source: Source,
    batch_size: int,
    projector: tda.Projector | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[N, d]`` per-example gradient features of ``source``, batch by batch."""
    if out is None:
        dim = task.num_params if projector is None else projector.dim
        out = torch.empty(len(source), dim, dtype=task.dtype, device=task.device)
    for b in source.batches(task, batch_size):
        batch_gradients(
            task,
            b.inputs,
            b.targets,
            projector=projector,
            out=out[b.start : b.stop],
            start=b.start,
        )
    return out


def dense_scores(score_block: BlockScorer, n_query: int, n_train: int, block: int) -> torch.Tensor:
    """``[n_query, n_train]`` assembled from blocks of training columns (as ``scores``)."""
    out = None
    for start, stop in row_blocks(n_train, block):
        s = score_block(start, stop)
        if out is None:
            out = torch.empty(n_query, n_train, dtype=s.dtype, device=s.device)
        out[:, start:stop] = s
    assert out is not None
    return out


def streaming_top_k(
    score_block: BlockScorer, n_train: int, k: int, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` per query merged block by block with ``TopK`` (as ``top_k``)."""
    top = TopK(k)
    for start, stop in row_blocks(n_train, block):
        top.update(start, score_block(start, stop))
    return top.result()


def featurisation(repeats: int, quick: bool) -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    cases = [
        ("MLP 64-64-10 (digits)", MLP(64, 10, hidden=(64,)), (1, 8, 8), 2048, 512),
        ("MLP 784-128-10 (FMNIST)", MLP(784, 10, hidden=(128,)), (1, 28, 28), 1024, 256),
        ("LeNet (FMNIST)", LeNet(1, 10, 28), (1, 28, 28), 512, 128),
        ("ResNet-9 w16 (FMNIST)", ResNet9(1, 10, 16), (1, 28, 28), 128 if quick else 256, 64),
    ]
    rows = []
    for name, model, shape, n, bs in cases:
        model.eval()
        X = torch.rand(n, *shape, generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
        task = tda.Task(model)
        source = as_source((X, y), "train")
        out = torch.empty(n, task.num_params)

        def plain(model=model, X=X, y=y, bs=bs) -> None:
            for s in range(0, len(X), bs):
                model.zero_grad()
                torch.nn.functional.cross_entropy(model(X[s : s + bs]), y[s : s + bs]).backward()

        def feats(task=task, source=source, bs=bs, out=out) -> None:
            gradient_features(task, source, bs, out=out)

        proj = tda.Projector(512, kind="sjlt", seed=0)

        def feats_sjlt(task=task, source=source, bs=bs, proj=proj) -> None:
            gradient_features(task, source, bs, projector=proj)

        t_plain = best_of(plain, repeats)
        t_feat = best_of(feats, repeats)
        t_sjlt = best_of(feats_sjlt, repeats)
        rows.append(
            (name, task.num_params, n, bs, t_plain, t_feat, t_plain / t_feat, t_plain / t_sjlt)
        )
    return rows


def scoring(repeats: int, quick: bool) -> list[tuple]:
    gen = torch.Generator().manual_seed(1)
    rows = []
    for n_q, n_t, d in [(100, 20000, 512), (100, 60000 if not quick else 20000, 2048)]:
        Q, T = torch.randn(n_q, d, generator=gen), torch.randn(n_t, d, generator=gen)

        def block(a: int, b: int, Q=Q, T=T) -> torch.Tensor:
            return Q @ T[a:b].T

        t_mm = best_of(lambda Q=Q, T=T: Q @ T.T, repeats)
        t_dense = best_of(
            lambda block=block, n_t=n_t, n_q=n_q: dense_scores(block, n_q, n_t, 4096), repeats
        )
        t_topk = best_of(
            lambda block=block, n_t=n_t: streaming_top_k(block, n_t, 10, 4096), repeats
        )
        rows.append((n_q, n_t, d, t_mm, t_dense, t_mm / t_dense, t_topk, t_mm / t_topk))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    print(
        "\n| model | params | examples | batch | plain fwd+bwd (s) | tdakit features (s) "
        "| ratio (plain/tdakit) | ratio with SJLT-512 projection |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, p, n, bs, tp, tf, r, rs in featurisation(args.repeats, args.quick):
        print(f"| {name} | {p} | {n} | {bs} | {tp:.3f} | {tf:.3f} | {r:.2f} | {rs:.2f} |")
    print(
        "\n| queries | train | dim | plain matmul (s) | blockwise scores (s) | ratio "
        "| streaming top-10 (s) | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for nq, nt, d, tm, td, r, tk, rk in scoring(args.repeats, args.quick):
        print(f"| {nq} | {nt} | {d} | {tm:.4f} | {td:.4f} | {r:.2f} | {tk:.4f} | {rk:.2f} |")


if __name__ == "__main__":
    main()
