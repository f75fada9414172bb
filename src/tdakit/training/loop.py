"""The training loop behind :class:`~tdakit.groundtruth.TrainingRecipe`.

Paired batch order: every epoch draws a permutation of *all* ``n`` positions from a CPU
generator seeded with ``batch_seed`` and keeps the positions that are in the training
subset, in permutation order. Two runs on different subsets with the same seed therefore
visit their common examples in the same relative order; in particular a leave-one-out run
sees exactly the full run's order with ``i`` deleted.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tdakit.errors import NumericalError, require
from tdakit.losses import resolve_loss
from tdakit.task import eval_mode

if TYPE_CHECKING:
    from tdakit.training.recipe import TrainingRecipe

__all__ = ["TrainRun", "epoch_batches", "train_loop"]


@dataclass
class TrainRun:
    """What one training run produced.

    ``losses``: mean training objective per (possibly partial) epoch; ``checkpoints`` /
    ``checkpoint_lrs``: state-dict copies every ``checkpoint_every`` epochs and the learning
    rate then; ``records``: ``measure(model)`` at each requested amount of training.
    """

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    checkpoints: list[dict[str, torch.Tensor]] = field(default_factory=list)
    checkpoint_lrs: list[float] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    steps: int = 0


def epoch_batches(
    keep: torch.Tensor, batch_seed: int, batch_size: int
) -> Iterator[list[torch.Tensor]]:
    """Endless iterator of epochs; each epoch is a list of index batches (CPU LongTensors).

    ``keep`` is a bool mask over all ``n`` positions; the permutation always has length ``n``
    so that subsets with the same ``batch_seed`` are paired.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(batch_seed))
    n = len(keep)
    while True:
        perm = torch.randperm(n, generator=generator)
        order = perm[keep[perm]]
        yield list(order.split(batch_size))


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the RNGs used by dropout & co. inside a loop, restoring global state afterwards."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _per_example(loss: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return resolve_loss(loss)[1]


class _FirstOrder:
    """SGD (momentum, L2 weight decay) and Adam with PyTorch's update rules.

    Written out so that worker processes do not pay the one-off import of ``torch._dynamo``
    that the first ``torch.optim`` optimiser triggers (seconds per process).
    """

    def __init__(self, recipe: TrainingRecipe, params: list[nn.Parameter]) -> None:
        self.params, self.kind = params, recipe.optimizer
        self.momentum, self.weight_decay = recipe.momentum, recipe.weight_decay
        self.param_groups = [{"lr": recipe.lr}]
        self.state: dict[int, dict[str, torch.Tensor]] = {}
        self.t = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        lr, self.t = self.param_groups[0]["lr"], self.t + 1
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for k, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad if not self.weight_decay else p.grad.add(p, alpha=self.weight_decay)
            state = self.state.setdefault(k, {})
            if self.kind == "sgd":
                if self.momentum:
                    if "buf" in state:
                        g = state["buf"].mul_(self.momentum).add_(g)
                    else:
                        g = state["buf"] = g.clone()
                p.add_(g, alpha=-lr)
                continue
            if not state:
                state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
            state["m"].mul_(beta1).add_(g, alpha=1 - beta1)
            state["v"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (state["v"].sqrt() / math.sqrt(1 - beta2**self.t)).add_(eps)
            p.addcdiv_(state["m"], denom, value=-lr / (1 - beta1**self.t))


def _optimizer(recipe: TrainingRecipe, params: list[nn.Parameter]):
    if recipe.optimizer != "lbfgs":
        return _FirstOrder(recipe, params)
    return torch.optim.LBFGS(
        params,
        lr=recipe.lr,
        max_iter=recipe.lbfgs_iters,
        tolerance_grad=1e-12,
        # float64 runs to the gradient tolerance (exact ground truth for convex models)
        tolerance_change=0.0 if params[0].dtype == torch.float64 else 1e-9,
        history_size=50,
        line_search_fn="strong_wolfe",
    )


def _lr_factor(schedule: str, step: int, total: int) -> float:
    if schedule == "linear":
        return 1.0 - step / total
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / total))
    return 1.0


def train_loop(
    recipe: TrainingRecipe,
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    keep: torch.Tensor,
    *,
    batch_seed: int,
    downweight: torch.Tensor | None,
    epsilon: float,
    record_at: list[int],
    record_unit: str,
    measure: Callable[[nn.Module], Any] | None,
    progress: bool,
) -> TrainRun:
    """Train ``model`` in place (see :meth:`TrainingRecipe.run`); leaves it in eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    require(len(params) > 0, "The model has no trainable parameters.")
    per_example = _per_example(recipe.loss)
    n_keep = int(keep.sum())
    per_epoch = math.ceil(n_keep / recipe.batch_size)
    if recipe.steps is not None:
        total, n_epochs = recipe.steps, math.ceil(recipe.steps / per_epoch)
    else:
        total, n_epochs = recipe.epochs * per_epoch, recipe.epochs
    limit = total if record_unit == "step" else n_epochs
    require(
        all(0 <= t <= limit for t in record_at),
        f"record_at must lie in [0, {limit}] {record_unit}s for this recipe, got {record_at}.",
    )
    require(not record_at or measure is not None, "record_at needs a measure(model) function.")
    records: dict[int, Any] = {}

    def record(t: int) -> None:
        if t in record_at and t not in records:
            assert measure is not None
            with torch.no_grad(), eval_mode(model):
                records[t] = measure(model)

    def objective(idx: torch.Tensor) -> torch.Tensor:
        value = per_example(model(X[idx]), y[idx]).mean()
        if downweight is not None and len(downweight):
            value = value - epsilon * per_example(model(X[downweight]), y[downweight]).sum()
        if recipe.optimizer == "lbfgs" and recipe.weight_decay:
            value = value + 0.5 * recipe.weight_decay * sum(p.pow(2).sum() for p in params)
        return value

    opt = _optimizer(recipe, params)
    run = TrainRun(model=model)
    schedule = epoch_batches(keep, batch_seed, recipe.batch_size)
    record(0)
    model.train()
    try:
        with seeded_rng(int(batch_seed), X.device):
            bar = tqdm(range(n_epochs), desc="train", disable=not progress, leave=False)
            for epoch in bar:
                total_loss, seen = 0.0, 0
                for idx in next(schedule):
                    if run.steps >= total:
                        break
                    idx = idx.to(X.device)
                    for group in opt.param_groups:
                        group["lr"] = recipe.lr * _lr_factor(recipe.schedule, run.steps, total)
                    loss = _step(opt, objective, idx)
                    total_loss += loss * len(idx)
                    seen += len(idx)
                    run.steps += 1
                    if record_unit == "step":
                        record(run.steps)
                mean = total_loss / max(seen, 1)
                if not math.isfinite(mean):
                    raise NumericalError(
                        f"Training loss became non-finite ({mean}) in epoch {epoch + 1}; the "
                        f"learning rate lr={recipe.lr} is probably too high: try a lower lr "
                        "(e.g. 10x smaller) or check the data for NaN/inf."
                    )
                run.losses.append(mean)
                bar.set_postfix(loss=f"{mean:.4f}")
                every = recipe.checkpoint_every
                if every is not None and (epoch + 1) % every == 0:
                    run.checkpoints.append(
                        {k: v.detach().clone() for k, v in model.state_dict().items()}
                    )
                    run.checkpoint_lrs.append(float(opt.param_groups[0]["lr"]))
                if record_unit == "epoch":
                    record(epoch + 1)
    finally:
        model.eval()
    run.records = [records[t] for t in record_at]
    return run


def _step(opt, objective: Callable[[torch.Tensor], torch.Tensor], idx) -> float:
    if isinstance(opt, torch.optim.LBFGS):
        first: list[float] = []

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            value = objective(idx)
            value.backward()
            first.append(float(value.detach()))
            return value

        opt.step(closure)
        return first[0]
    value = objective(idx)
    opt.zero_grad(set_to_none=True)
    value.backward()
    opt.step()
    return float(value.detach())
