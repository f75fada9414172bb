"""Training runs as executor jobs: many models trained in parallel, cached by content."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tdakit.batching import fingerprint
from tdakit.execution import Executor, Job, Shared


def train_state(
    recipe: Any,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    indices: torch.Tensor | None,
    init_seed: int,
    batch_seed: int,
    device: str,
) -> dict[str, torch.Tensor]:
    """Train on ``X[indices]`` (positions; all when None) and return the state dict (CPU)."""
    model = recipe.train(
        X.to(device), y.to(device), indices=indices, init_seed=init_seed, batch_seed=batch_seed
    )
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_states(
    recipe: Any,
    X: torch.Tensor,
    y: torch.Tensor,
    runs: Sequence[tuple[torch.Tensor | None, int, int]],
    executor: Executor | None = None,
    desc: str = "training",
) -> list[dict[str, torch.Tensor]]:
    """State dicts of ``recipe`` trained once per ``(indices, init_seed, batch_seed)`` run,
    through ``executor`` (default: in this process, no cache)."""
    executor = executor or Executor(backend="serial", progress=False)
    data = {"train": fingerprint(X, y), "device": str(X.device)}
    Xs, ys = Shared(X.detach().cpu()), Shared(y.detach().cpu())
    jobs = [
        Job(
            train_state,
            (recipe, Xs, ys),
            {"indices": idx, "init_seed": i, "batch_seed": b, "device": str(X.device)},
            name=f"train init {i} batch {b}",
            describe={"recipe": recipe, "indices": idx, "seeds": [i, b], **data},
        )
        for idx, i, b in runs
    ]
    return executor.run(jobs, desc=desc)


def train_outputs(
    recipe: Any,
    X: torch.Tensor,
    y: torch.Tensor,
    X_eval: torch.Tensor,
    *,
    indices: torch.Tensor | None,
    init_seed: int,
    batch_seed: int,
    device: str,
) -> torch.Tensor:
    """Train on ``X[indices]`` and return the model's outputs on ``X_eval`` (CPU, float64)."""
    from tdakit.task import eval_mode

    model = recipe.train(
        X.to(device), y.to(device), indices=indices, init_seed=init_seed, batch_seed=batch_seed
    )
    dev = next(iter(model.parameters()), torch.empty(0)).device
    with torch.no_grad(), eval_mode(model):
        out = [model(X_eval[a : a + 1024].to(dev)) for a in range(0, len(X_eval), 1024)]
    return torch.cat(out).detach().to("cpu", torch.float64)


def train_and_predict(
    recipe: Any,
    X: torch.Tensor,
    y: torch.Tensor,
    X_eval: torch.Tensor,
    runs: Sequence[tuple[torch.Tensor | None, int, int]],
    executor: Executor | None = None,
    desc: str = "retraining",
) -> list[torch.Tensor]:
    """Outputs on ``X_eval`` of ``recipe`` trained once per ``(indices, init_seed,
    batch_seed)`` run, through ``executor`` (default: in this process, no cache)."""
    executor = executor or Executor(backend="serial", progress=False)
    data = {"train": fingerprint(X, y), "eval": fingerprint(X_eval), "device": str(X.device)}
    Xs, ys, Xe = Shared(X.detach().cpu()), Shared(y.detach().cpu()), Shared(X_eval.detach().cpu())
    jobs = [
        Job(
            train_outputs,
            (recipe, Xs, ys, Xe),
            {"indices": idx, "init_seed": i, "batch_seed": b, "device": str(X.device)},
            name=f"train init {i} batch {b}",
            describe={"recipe": recipe, "indices": idx, "seeds": [i, b], **data},
        )
        for idx, i, b in runs
    ]
    return executor.run(jobs, desc=desc)
