"""Posterior samplers: draws of "the model a training run could have produced".

Each sampler yields :class:`PosteriorSample` s: one or more weight states (several =
checkpoints of one run, whose scores are averaged within the run first), the seeds that
produced them (for the init / batch-order variance split), and the run's checkpoints for
methods that need them (TracIn, TRAK). Retraining is the reference; the others are cheap:

- :class:`Retraining`: models retrained from scratch; ``vary="init"`` (batch order fixed),
  ``"batch"`` (initialisation fixed), ``"both"``, or ``"grid"`` (every init seed with every
  batch seed: the design for the variance split); optionally the last ``K`` checkpoints;
- :class:`FurtherTraining`: seeded further training of the final model only;
- :class:`Checkpoints`: checkpoints saved along one run;
- :class:`Laplace`: draws from the linearised (K-FAC / EK-FAC GGN) Laplace posterior around
  the final weights, ``theta ~ N(theta*, (N G + delta I)^-1)``, factor by factor.

Retraining and further training run through the executor (cached, resumable, parallel).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tdakit.data.sources import DataLike, as_source
from tdakit.errors import require
from tdakit.execution import Executor
from tdakit.groundtruth.ensembles import VARY, further_samples, seed_ensemble
from tdakit.preconditioners import EKFAC, KFAC, Curvature
from tdakit.task import Task

State = dict[str, torch.Tensor]


@dataclass
class PosteriorSample:
    """One draw: ``states`` (scores are averaged over them), its seeds, its checkpoints."""

    states: list[State]
    init_seed: int | None = None
    batch_seed: int | None = None
    checkpoints: list[State] = field(default_factory=list)
    checkpoint_lrs: list[float] = field(default_factory=list)


class Sampler:
    """Base class: ``draw(task, train)`` yields :class:`PosteriorSample` s."""

    n_samples: int

    def draw(self, task: Task, train: DataLike) -> Iterator[PosteriorSample]:
        raise NotImplementedError


def _count(n: int, name: str = "n_samples") -> int:
    require(
        isinstance(n, int) and not isinstance(n, bool) and n >= 2,
        f"{name} must be an int >= 2 (a spread needs two samples), got {n!r}.",
    )
    return n


class Retraining(Sampler):
    """Retrain with ``recipe`` under ``n_samples`` seed settings (see the module doc).

    ``vary="grid"`` trains ``n_samples x n_samples`` models (init seeds x batch seeds).
    ``last_k``: also keep the last ``K`` checkpoints of each run and average the scores
    over them (they must be taken, e.g. ``recipe.checkpoint_every=1``).
    """

    def __init__(
        self,
        recipe: Any,
        n_samples: int = 10,
        *,
        vary: str = "both",
        seed: int = 0,
        last_k: int = 0,
        executor: Executor | None = None,
    ) -> None:
        require(vary in (*VARY, "grid"), f"vary must be one of {(*VARY, 'grid')}, got {vary!r}.")
        require(isinstance(last_k, int) and last_k >= 0, f"last_k must be >= 0, got {last_k!r}.")
        self.recipe, self.n_samples, self.vary = recipe, _count(n_samples), vary
        self.seed, self.last_k, self.executor = seed, last_k, executor

    def pairs(self) -> list[tuple[int, int]]:
        s, n = self.seed, self.n_samples
        if self.vary == "grid":
            return [(s + i, s + b) for i in range(n) for b in range(n)]
        return [
            (s + k if self.vary != "batch" else s, s + k if self.vary != "init" else s)
            for k in range(n)
        ]

    def draw(self, task: Task, train: DataLike) -> Iterator[PosteriorSample]:
        ens = seed_ensemble(
            self.recipe, train, keep_last=self.last_k, pairs=self.pairs(), executor=self.executor
        )
        for k, (i, b) in enumerate(ens.seeds):
            ckpts, lrs = ens.checkpoints[k], ens.checkpoint_lrs[k]
            states = list(ckpts) if self.last_k else [ens.states[k]]
            yield PosteriorSample(states, i, b, list(ckpts), list(lrs))


class FurtherTraining(Sampler):
    """Seeded further training of the final model: ``theta_f + dtheta_t(D, xi)``."""

    def __init__(
        self,
        recipe: Any,
        n_samples: int = 10,
        *,
        steps: int = 1,
        unit: str = "epoch",
        lr_scale: float = 0.1,
        seed: int = 0,
        executor: Executor | None = None,
    ) -> None:
        self.recipe, self.n_samples, self.steps, self.unit = recipe, _count(n_samples), steps, unit
        self.lr_scale, self.seed, self.executor = lr_scale, seed, executor

    def draw(self, task: Task, train: DataLike) -> Iterator[PosteriorSample]:
        seeds = [self.seed + k for k in range(self.n_samples)]
        states = further_samples(
            self.recipe,
            task.model,
            train,
            seeds=seeds,
            steps=self.steps,
            unit=self.unit,
            lr_scale=self.lr_scale,
            executor=self.executor,
        )
        for s, state in zip(seeds, states, strict=True):
            yield PosteriorSample([state], None, s)


class Checkpoints(Sampler):
    """Checkpoints saved along one training run, each one sample."""

    def __init__(self, checkpoints: Sequence[Mapping[str, torch.Tensor] | nn.Module]) -> None:
        self.checkpoints = [
            c.state_dict() if isinstance(c, nn.Module) else dict(c) for c in checkpoints
        ]
        self.n_samples = _count(len(self.checkpoints), "the number of checkpoints")

    def draw(self, task: Task, train: DataLike) -> Iterator[PosteriorSample]:
        for state in self.checkpoints:
            yield PosteriorSample([state])


class Laplace(Sampler):
    """Linearised Laplace posterior around the final weights, K-FAC / EK-FAC factored.

    ``theta ~ N(theta*, (N G + delta I)^-1)`` over the task's attributed parameters, with
    ``G`` the (E)K-FAC GGN of the mean training loss and ``delta`` the prior precision
    (``"auto"``: the unit-information rule, ``delta = mean eigenvalue of N G / N``, i.e. the
    curvature of one average example). Each factor is sampled in its Kronecker eigenbasis.
    """

    def __init__(
        self,
        n_samples: int = 10,
        *,
        prior_precision: float | str = "auto",
        eigen_correction: bool = True,
        seed: int = 0,
        batch_size: int = 128,
    ) -> None:
        require(
            prior_precision == "auto"
            or (isinstance(prior_precision, (int, float)) and prior_precision > 0),
            f"prior_precision must be > 0 or 'auto', got {prior_precision!r}.",
        )
        self.n_samples, self.prior_precision = _count(n_samples), prior_precision
        self.eigen_correction, self.seed, self.batch_size = eigen_correction, seed, batch_size

    def draw(self, task: Task, train: DataLike) -> Iterator[PosteriorSample]:
        source = as_source(train, "train")
        solver = EKFAC() if self.eigen_correction else KFAC()
        solver.fit(Curvature(task, source, "ggn", 0.0, batch_size=self.batch_size))
        N = len(source)
        eig = torch.cat([L.eigenvalues.reshape(-1) for L in solver.layers_])
        delta = float(eig.mean()) if self.prior_precision == "auto" else float(self.prior_precision)
        self.prior_precision_ = delta
        base = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.n_samples):
            step = torch.zeros(task.num_params, dtype=torch.float64)
            for layer in solver.layers_:
                std = 1.0 / torch.sqrt(N * layer.eigenvalues.cpu() + delta)
                Z = torch.randn(std.shape, generator=gen, dtype=torch.float64) * std
                _place(layer, Z, step)
            state = dict(base)
            offset = 0
            for name, p in task.params().items():
                n = p.numel()
                state[name] = (p + step[offset : offset + n].reshape(p.shape).to(p)).detach()
                offset += n
            yield PosteriorSample([state])


def _place(layer: Any, Z: torch.Tensor, out: torch.Tensor) -> None:
    """Rotate a standard draw from the layer's eigenbasis into its flat parameters."""
    if layer.kind == "diagonal":
        offset = 0
        for a, b in layer.slots():
            out[a:b] = Z[offset : offset + b - a]
            offset += b - a
        return
    QG = layer.QG.cpu().double()
    M = QG @ Z if layer.QA is None else QG @ Z @ layer.QA.cpu().double().T
    layer.scatter(M.unsqueeze(0), out.unsqueeze(0))


class Drawn(Sampler):
    """Samples drawn once (e.g. ``list(sampler.draw(task, train))``), reused by several
    methods so that they are judged on the same posterior samples."""

    def __init__(self, samples: Sequence[PosteriorSample]) -> None:
        self.samples = list(samples)
        self.n_samples = _count(len(self.samples), "the number of samples")

    def draw(self, task: Task, train: DataLike) -> Iterator[PosteriorSample]:
        yield from self.samples
