"""Peak memory is flat in the number of training examples (issue D, streaming).

Fashion-MNIST LeNet, N = 10 k, 60 k and an augmented 240 k (each 60 k image also shifted
by 1-3 pixels, generated on the fly by a Dataset: the data are never copied). Each
(method, N) runs in a fresh process that measures its peak RSS (``ru_maxrss``) after
imports and data loading (the baseline) and after ``fit`` + ``top_k`` of 100 queries:

- ``graddot-store``: Grad-Dot with a 512-dimensional sparse (SJLT) projection, features in a
  feature store on disk (memory-mapped, read chunk by chunk);
- ``ekfac-recompute``: EK-FAC influence, training gradients never kept (recomputed and
  streamed against the preconditioned queries).

Usage: python benchmarks/bench_memory.py [--sizes 10000 60000 240000] [--out FILE.json]
(prefix ``MALLOC_MMAP_THRESHOLD_=131072`` to serve large blocks by mmap: glibc's heap then
does not keep the freed temporaries, see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tdakit.storage.fileio import atomic_write


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Augmented(torch.utils.data.Dataset):
    """``n`` examples: base image ``i % 60000`` rolled right by ``i // 60000`` pixels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, n: int) -> None:
        self.images, self.labels, self.n = images, labels, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        base, shift = i % len(self.images), i // len(self.images)
        x = self.images[base].float().div_(255).unsqueeze(0)
        return torch.roll(x, shifts=shift, dims=2), self.labels[base]


def child(method: str, n: int) -> dict:
    import numpy as np

    import tdakit as tda
    from tdakit.data.datasets import FASHION_MNIST_DIR, read_idx
    from tdakit.models import build_model

    torch.set_num_threads(2)
    images = torch.from_numpy(
        np.ascontiguousarray(read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz"))
    )
    labels = torch.from_numpy(
        read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").astype(np.int64)
    )
    train = Augmented(images, labels, n)
    queries = Augmented(images[-100:], labels[-100:], 100)
    model = build_model("lenet", (1, 28, 28), 10, seed=0).eval()
    task = tda.Task(model)
    baseline = peak_mib()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if method == "graddot-store":
            sketch = tda.Projector(512, kind="sjlt", seed=0)
            m = tda.GradDot(task, projection=sketch, storage="store", cache_dir=tmp, batch_size=256)
        else:
            m = tda.InfluenceFunction(
                task, solver="ekfac", damping=1e-3, storage="recompute", batch_size=256
            )
        m.fit(train)
        idx, _ = m.top_k(queries, k=10)
    return {
        "method": method,
        "n": n,
        "baseline_mib": baseline,
        "peak_mib": peak_mib(),
        "seconds": time.perf_counter() - t0,
        "top1": idx[:3, 0].tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 60_000, 240_000])
    parser.add_argument("--methods", nargs="+", default=["graddot-store", "ekfac-recompute"])
    parser.add_argument("--out", default="benchmarks/results/memory.json")
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    rows = []
    for method in args.methods:
        for n in args.sizes:
            out = subprocess.run(
                [sys.executable, __file__, "--child", method, str(n)],
                check=True,
                capture_output=True,
                text=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["growth_mib"] = row["peak_mib"] - row["baseline_mib"]
            row["malloc_mmap_threshold"] = os.environ.get("MALLOC_MMAP_THRESHOLD_")
            rows.append(row)
            payload = json.dumps({"rows": rows, "load": os.getloadavg()}, indent=1).encode()
            atomic_write(Path(args.out), lambda f, b=payload: f.write(b))  # after every row
            print(
                f"{method:16s} N={n:>7d}  baseline {row['baseline_mib']:7.0f} MiB  peak "
                f"{row['peak_mib']:7.0f} MiB  growth {row['growth_mib']:6.0f} MiB  "
                f"{row['seconds']:6.1f} s",
                flush=True,
            )
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        lo, hi = mine[0]["peak_mib"], mine[-1]["peak_mib"]
        print(
            f"{method}: peak RSS at N={mine[-1]['n']} is {hi / lo:.3f} x the peak at "
            f"N={mine[0]['n']} ({100 * (hi / lo - 1):+.1f} %)"
        )


if __name__ == "__main__":
    main()
