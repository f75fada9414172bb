"""Worker-side job functions of the oracles, and the plumbing shared by the oracles.

Job functions are module-level (picklable by reference), take CPU tensors, train on
``device`` and return CPU results, so a cached result is the same on every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tdakit.batching import fingerprint as fingerprint_tensors
from tdakit.data.sources import DataLike, to_tensors
from tdakit.errors import ConfigError, require
from tdakit.execution import Shared
from tdakit.fingerprints import describe_callable
from tdakit.losses import MEASUREMENTS
from tdakit.task import Task

QUERY_BATCH = 1024


@dataclass(frozen=True)
class Measure:
    """The loss-like query objective of a trained model: the user's ``task`` (its loss,
    measurement and hooks on the trained weights), or ``Task(model, loss, measurement)``."""

    loss: Any = "cross_entropy"
    measurement: Any = "loss"
    task: Task | None = None

    def task_for(self, model: nn.Module) -> Task:
        if self.task is not None:
            return self.task.with_model(model)
        return Task(model, loss=self.loss, measurement=self.measurement)

    def __call__(self, model: nn.Module, Xq: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
        task = self.task_for(model)
        xq = Xq.to(task.dtype) if Xq.is_floating_point() else Xq
        # The measurement needs no attributed parameters: evaluate the model's own weights
        # ({} replaces none), so params="last_layer" tasks need no forward pass to resolve.
        with torch.no_grad():
            out = [
                task.query_losses({}, xq[a : a + QUERY_BATCH], yq[a : a + QUERY_BATCH])
                for a in range(0, len(xq), QUERY_BATCH)
            ]
        return torch.cat(out).detach().cpu()

    def config(self) -> dict:
        if self.task is not None:
            return {"task": self.task.code_key(), "measurement": self.task.measurement_name}
        loss = self.loss if isinstance(self.loss, str) else describe_callable(self.loss)
        return {"loss": loss, "measurement": self.measurement}


def make_measure(recipe: Any, measurement: Any, task: Task | None) -> Measure:
    """The measure of an oracle: the task's when given, else the recipe's loss."""
    if task is not None:
        require(
            isinstance(task, Task),
            f"task must be a tdakit.Task, got {type(task).__name__}.",
        )
        require(
            measurement in (None, "loss"),
            "Pass the measurement through the task (Task(..., measurement=...)) when task= is "
            "given, not both.",
        )
        return Measure(task.loss_spec, task.measurement_spec, task)
    measurement = "loss" if measurement is None else measurement
    check_measurement(measurement)
    loss = getattr(recipe, "loss", None)
    if loss is None:
        raise ConfigError(
            "The recipe does not say which loss it trains; pass task=tda.Task(model, loss=...) "
            "so that the oracle measures the queries the way your method does."
        )
    return Measure(loss, measurement)


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


def prepare(train: DataLike, queries: DataLike | None, measure: Measure | None) -> Data:
    """Check the data, move tensors to the CPU for shipping, fingerprint them."""
    X, y = to_tensors(train, "train")
    device = str(X.device)
    desc: dict[str, Any] = {"train": fingerprint_tensors(X, y), "device": device}
    Xq = yq = None
    if queries is not None:
        Xq_t, yq_t = to_tensors(queries, "query")
        require(
            Xq_t.shape[1:] == X.shape[1:],
            f"Query inputs have shape {tuple(Xq_t.shape[1:])} per example but training "
            f"inputs {tuple(X.shape[1:])}; they must match.",
        )
        Xq, yq = Shared(Xq_t.detach().cpu()), Shared(yq_t.detach().cpu())
        desc["queries"] = fingerprint_tensors(Xq_t, yq_t)
        assert measure is not None
        desc["measure"] = measure.config()
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


def _on(device: str, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(device) for t in tensors]


def measurer(measure: Measure, Xq, yq) -> Callable[[nn.Module], Any]:
    def run(model: nn.Module) -> torch.Tensor:
        return measure(model, Xq, yq)

    return run


# --- job functions (run in workers) ----------------------------------------------------------
def train_and_measure(
    recipe: Any,
    X: torch.Tensor,
    y: torch.Tensor,
    Xq: torch.Tensor,
    yq: torch.Tensor,
    *,
    keep: torch.Tensor | None,
    init_seed: int,
    batch_seed: int,
    measure: Measure,
    device: str,
) -> torch.Tensor:
    """Train on ``X[keep]`` (positions) and return the query objective ``[n_query]``."""
    X, y, Xq, yq = _on(device, X, y, Xq, yq)
    model = recipe.train(X, y, indices=keep, init_seed=init_seed, batch_seed=batch_seed)
    return measurer(measure, Xq, yq)(model)


def train_states(
    recipe: Any,
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

    def cpu(state: dict) -> dict:
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    if not hasattr(recipe, "run"):  # a user's training function: the final model only
        model = recipe.train(X, y, init_seed=init_seed, batch_seed=batch_seed)
        return {"state": cpu(model.state_dict()), "checkpoints": [], "checkpoint_lrs": []}
    run = recipe.run(X, y, init_seed=init_seed, batch_seed=batch_seed)

    ckpts = run.checkpoints[-keep_last:] if keep_last else []
    lrs = run.checkpoint_lrs[-keep_last:] if keep_last else []
    return {
        "state": cpu(run.model.state_dict()),
        "checkpoints": [cpu(c) for c in ckpts],
        "checkpoint_lrs": list(lrs),
    }


def continue_state(
    recipe: Any,
    state: dict[str, torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_seed: int,
    device: str,
) -> dict[str, torch.Tensor]:
    """Continue training from ``state`` on all data; return the new state (CPU)."""
    X, y = _on(device, X, y)
    run = recipe.run(X, y, batch_seed=batch_seed, init_state=state)
    return {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}


def continue_and_measure(
    recipe: Any,
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
    measure: Measure,
    device: str,
) -> torch.Tensor:
    """Continue training from ``state`` (leaving out one example or none) and return the
    query objective after each amount of training ``[len(record_at), n_query]``."""
    X, y, Xq, yq = _on(device, X, y, Xq, yq)
    keep = None
    if drop is not None:
        keep = torch.cat([torch.arange(drop), torch.arange(drop + 1, len(X))])
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
        measure=measurer(measure, Xq, yq),
    )
    return torch.stack(run.records)
