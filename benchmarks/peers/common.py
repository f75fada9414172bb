"""Shared pieces of the peer benchmark: the cases, per-process measurement, Spearman.

A *case* is a trained model plus its training set and queries. The driver (``run.py``)
trains each case once and saves it; every (library, method) runs in its own child process
(``child.py``) that loads the saved case, so peak memory is that method's alone.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tdakit import Task
from tdakit.data import load_digits, load_fashion_mnist
from tdakit.data.sources import as_source
from tdakit.models import MLP
from tdakit.preconditioners.iterative import power_iteration
from tdakit.preconditioners.operators import CurvatureOperator
from tdakit.training import train_model

# name -> how to build it. hidden: MLP widths; lam: the influence damping (tdakit convention:
# absolute, added to the curvature of the MEAN training loss).
CASES = {
    "digits": {
        "title": "digits MLP 64-64-10 (P=4,810), 1,000 train x 100 queries",
        "n_train": 1000,
        "n_query": 100,
        "hidden": (64,),
        "epochs": 30,
        "lam": 0.05,  # the Hessian's smallest eigenvalue is -0.0205
    },
    "fmnist": {
        "title": "Fashion-MNIST MLP 784-64-10 (P=50,890), 5,000 train x 100 queries",
        "n_train": 5000,
        "n_query": 100,
        "hidden": (64,),
        "epochs": 15,
        "lam": 0.5,  # the Hessian has eigenvalues down to about -0.26
    },
}


@dataclass
class Case:
    """A trained model and its data, as every runner receives it."""

    name: str
    model: nn.Module
    X: torch.Tensor
    y: torch.Tensor
    Xq: torch.Tensor
    yq: torch.Tensor
    lam: float
    checkpoint: Path  # the model's state dict on disk (for peers that load checkpoints)
    workdir: Path  # scratch space for peers that write files

    @property
    def n_train(self) -> int:
        return len(self.X)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def last_layer(self) -> list[str]:
        return ["head.weight", "head.bias"]


def _model(name: str, in_features: int) -> nn.Module:
    return MLP(in_features, 10, hidden=CASES[name]["hidden"])


def prepare_case(name: str, workdir: Path) -> Path:
    """Load the data, train the model (seeded) and save everything to ``workdir``."""
    spec = CASES[name]
    torch.manual_seed(0)
    if name == "digits":
        data = load_digits(seed=0)
    else:
        data = load_fashion_mnist(n_train=spec["n_train"], n_test=spec["n_query"], seed=0)
    X, y = data.X_train[: spec["n_train"]], data.y_train[: spec["n_train"]]
    Xq, yq = data.X_test[: spec["n_query"]], data.y_test[: spec["n_query"]]
    model = _model(name, X[0].numel())
    result = train_model(model, X, y, epochs=spec["epochs"], lr=0.05, seed=0, progress=False)
    with torch.no_grad():
        acc = float((model(Xq).argmax(1) == yq).float().mean())
    # LiSSA's scale, shared by tdakit and dattri: 1.5 x (top Hessian eigenvalue + λ).
    op = CurvatureOperator(Task(model), as_source((X, y), "train"), "hessian", batch_size=1000)
    lissa_scale = 1.5 * (abs(power_iteration(op, iters=50, seed=0)) + spec["lam"])
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / f"{name}-model.pt"
    torch.save(model.state_dict(), ckpt)
    path = workdir / f"{name}-case.pt"
    torch.save(
        {
            "X": X,
            "y": y,
            "Xq": Xq,
            "yq": yq,
            "train_loss": result.losses[-1],
            "query_acc": acc,
            "lissa_scale": lissa_scale,
        },
        path,
    )
    return path


def load_case(name: str, workdir: Path) -> Case:
    blob = torch.load(workdir / f"{name}-case.pt")
    ckpt = workdir / f"{name}-model.pt"
    model = _model(name, blob["X"][0].numel())
    model.load_state_dict(torch.load(ckpt))
    model.eval()
    scratch = workdir / "scratch"
    scratch.mkdir(exist_ok=True)
    return Case(
        name, model, blob["X"], blob["y"], blob["Xq"], blob["yq"], CASES[name]["lam"], ckpt, scratch
    )


# --- measurement -------------------------------------------------------------------------
def warm_up_torch() -> None:
    """Trigger torch's lazy imports and kernel setup (torch.func, autograd.functional,
    linalg) on a toy problem, so that no library's timing includes them."""
    from torch.func import functional_call, grad, hessian, jvp, vmap

    lin = nn.Linear(3, 2)
    params = {k: v.detach() for k, v in lin.named_parameters()}
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])

    def loss(p, xb, tb):
        return F.cross_entropy(functional_call(lin, p, (xb,)), tb)

    vmap(grad(loss), in_dims=(None, 0, 0))(params, x[:, None], t[:, None])
    jvp(lambda p: grad(loss)(p, x, t), (params,), (params,))
    flat = torch.cat([v.reshape(-1) for v in params.values()])
    torch.autograd.functional.hessian(lambda w: (x @ w[:6].view(2, 3).T).pow(2).sum(), flat)
    hessian(lambda w: (x @ w[:6].view(2, 3).T).pow(2).sum())(flat)
    A = torch.eye(3) * 2
    torch.linalg.cholesky(A), torch.linalg.eigh(A), torch.linalg.solve(A, A), torch.linalg.inv(A)


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))  # type: ignore[union-attr]


def measure(fn):
    """Run ``fn()``; return (result, wall seconds, peak RSS increase in MiB).

    The kernel's peak-RSS counter (VmHWM) is reset right before ``fn`` (``clear_refs``
    value 5), so the peak is that of ``fn`` alone, minus the RSS it started from.
    """
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    return out, seconds, max(peak - base, 0) / 1024


# --- agreement ---------------------------------------------------------------------------
def spearman_rows(A: torch.Tensor, B: torch.Tensor) -> np.ndarray:
    """Spearman correlation of each row of ``A`` with the same row of ``B`` (average ranks)."""
    from scipy.stats import rankdata

    ra = rankdata(A.detach().double().cpu().numpy(), axis=1)
    rb = rankdata(B.detach().double().cpu().numpy(), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1)
    return (ra * rb).sum(1) / np.where(den > 0, den, 1.0)
