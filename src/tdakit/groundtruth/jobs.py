"""Worker-side job functions of the oracles, and the plumbing shared by the oracles.

Job functions are module-level (picklable by reference), take CPU tensors, train on
``device`` and return CPU results, so a cached result is the same on every backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tdakit.errors import require
from tdakit.groundtruth.executor import BACKENDS, Job, Shared, run_jobs
from tdakit.groundtruth.recipe import TrainingRecipe
from tdakit.inputs import DataLike, as_tensors, fingerprint_tensors
from tdakit.task import MEASUREMENTS, Task

__all__ = ["Executor"]

QUERY_BATCH = 1024


@dataclass(frozen=True)
class Executor:
    """Where and how oracle jobs run (see :func:`~tdakit.groundtruth.run_jobs`).

    ``cache_dir`` keeps every finished retraining on disk, keyed by content, so a rerun
    (or an interrupted one) only computes what is missing.
    """

    backend: str = "local"
    workers: int = 2
    cache_dir: str | os.PathLike | None = None
    progress: bool = True
    ray_address: str | None = None

    def __post_init__(self) -> None:
        require(self.backend in BACKENDS, f"Unknown backend {self.backend!r}; use {BACKENDS}.")

    def run(self, jobs: Sequence[Job], desc: str = "jobs") -> list[Any]:
        return run_jobs(
            jobs,
            backend=self.backend,
            workers=self.workers,
            cache_dir=self.cache_dir,
            progress=self.progress,
            ray_address=self.ray_address,
            desc=desc,
        )


@dataclass
class Data:
    """Training and query tensors on the CPU, wrapped for the workers, plus fingerprints."""

    X: Shared
    y: Shared
    Xq: Shared | None
    yq: Shared | None
    n: int
    device: str
    description: dict


def prepare(train: DataLike, queries: DataLike | None, measurement: Any) -> Data:
    """Check the data and the measurement, move tensors to the CPU for shipping."""
    X, y = as_tensors(train, "train")
    device = str(X.device)
    desc: dict[str, Any] = {"train": fingerprint_tensors(X, y), "device": device}
    Xq = yq = None
    if queries is not None:
        Xq_t, yq_t = as_tensors(queries, "query")
        require(
            Xq_t.shape[1:] == X.shape[1:],
            f"Query inputs have shape {tuple(Xq_t.shape[1:])} per example but training "
            f"inputs {tuple(X.shape[1:])}; they must match.",
        )
        Xq, yq = Shared(Xq_t.detach().cpu()), Shared(yq_t.detach().cpu())
        desc["queries"] = fingerprint_tensors(Xq_t, yq_t)
        check_measurement(measurement)
        desc["measurement"] = measurement
    return Data(Shared(X.detach().cpu()), Shared(y.detach().cpu()), Xq, yq, len(X), device, desc)


def check_measurement(measurement: Any) -> None:
    ok = measurement in MEASUREMENTS or (
        isinstance(measurement, int) and not isinstance(measurement, bool) and measurement >= 0
    )
    require(
        ok,
        f"measurement must be one of {MEASUREMENTS} or a logit index (int >= 0), got "
        f"{measurement!r}.",
    )


def positions(indices: Sequence[int] | torch.Tensor | None, n: int, name: str) -> torch.Tensor:
    """Sorted unique positions in ``[0, n)`` as a CPU LongTensor (all when ``None``)."""
    if indices is None:
        return torch.arange(n)
    idx = torch.as_tensor(indices).reshape(-1).cpu()
    require(
        not idx.is_floating_point() and idx.dtype != torch.bool,
        f"{name} must be integer positions, got {idx.dtype}.",
    )
    require(len(idx) > 0, f"{name} is empty; pass at least one training position.")
    require(
        int(idx.min()) >= 0 and int(idx.max()) < n,
        f"{name} must lie in [0, {n}), got values in [{int(idx.min())}, {int(idx.max())}].",
    )
    require(len(idx.unique()) == len(idx), f"{name} contains repeated positions.")
    return idx.long()


def query_losses(
    model: nn.Module, loss: str, measurement: Any, Xq: torch.Tensor, yq: torch.Tensor
) -> torch.Tensor:
    """The loss-like query objective ``[n_query]`` of ``model`` (CPU, no gradients)."""
    task = Task(model, loss=loss, measurement=measurement)
    params = task.params()
    with torch.no_grad():
        out = [
            task.query_losses(params, Xq[a : a + QUERY_BATCH], yq[a : a + QUERY_BATCH])
            for a in range(0, len(Xq), QUERY_BATCH)
        ]
    return torch.cat(out).detach().cpu()


def _on(device: str, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(device) for t in tensors]


def measurer(recipe: TrainingRecipe, measurement: Any, Xq, yq) -> Callable[[nn.Module], Any]:
    def measure(model: nn.Module) -> torch.Tensor:
        xq = Xq.to(next(model.parameters()).dtype) if Xq.is_floating_point() else Xq
        return query_losses(model, recipe.loss, measurement, xq, yq)

    return measure


# --- job functions (run in workers) ----------------------------------------------------------
def train_and_measure(
    recipe: TrainingRecipe,
    X: torch.Tensor,
    y: torch.Tensor,
    Xq: torch.Tensor,
    yq: torch.Tensor,
    *,
    keep: torch.Tensor | None,
    init_seed: int,
    batch_seed: int,
    measurement: Any,
    device: str,
) -> torch.Tensor:
    """Train on ``X[keep]`` and return the query objective ``[n_query]``."""
    X, y, Xq, yq = _on(device, X, y, Xq, yq)
    model = recipe.train(X, y, indices=keep, init_seed=init_seed, batch_seed=batch_seed)
    return measurer(recipe, measurement, Xq, yq)(model)


def train_states(
    recipe: TrainingRecipe,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    init_seed: int,
    batch_seed: int,
    keep_last: int,
    device: str,
) -> dict[str, Any]:
    """Train once; return the final state dict and the last ``keep_last`` checkpoints (CPU)."""
    X, y = _on(device, X, y)
    run = recipe.run(X, y, init_seed=init_seed, batch_seed=batch_seed)

    def cpu(state: dict) -> dict:
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    ckpts = run.checkpoints[-keep_last:] if keep_last else []
    lrs = run.checkpoint_lrs[-keep_last:] if keep_last else []
    return {
        "state": cpu(run.model.state_dict()),
        "checkpoints": [cpu(c) for c in ckpts],
        "checkpoint_lrs": list(lrs),
    }


def continue_and_measure(
    recipe: TrainingRecipe,
    state: dict[str, torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
    Xq: torch.Tensor,
    yq: torch.Tensor,
    *,
    drop: int | None,
    downweight: int | None,
    epsilon: float | None,
    batch_seed: int,
    record_at: list[int],
    unit: str,
    measurement: Any,
    device: str,
) -> torch.Tensor:
    """Continue training from ``state`` (leaving out one example or none) and return the
    query objective after each amount of training ``[len(record_at), n_query]``."""
    X, y, Xq, yq = _on(device, X, y, Xq, yq)
    keep = None
    if drop is not None:
        keep = torch.ones(len(X), dtype=torch.bool)
        keep[drop] = False
    run = recipe.run(
        X,
        y,
        indices=keep,
        batch_seed=batch_seed,
        init_state=state,
        downweight=None if downweight is None else [downweight],
        epsilon=epsilon,
        record_at=record_at,
        record_unit=unit,
        measure=measurer(recipe, measurement, Xq, yq),
    )
    return torch.stack(run.records)
