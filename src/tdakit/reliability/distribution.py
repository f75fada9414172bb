"""Score distributions of a method or of leave-one-out ground truth over posterior samples,
and explanations that carry their verdicts.

>>> sampler = tda.reliability.Retraining(recipe, n_samples=10, vary="init")
>>> dist = tda.reliability.score_distribution(method, sampler, train, queries)
>>> dist.fraction_reliable, dist.snr                       # per pair: mean / sd
>>> exp = tda.reliability.explain(dist, k=5)               # top-5 with SNR, p, reliable
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from tdakit.data.sources import DataLike
from tdakit.errors import require
from tdakit.execution import Executor
from tdakit.groundtruth.loo import leave_one_out
from tdakit.methods.base import AttributionMethod
from tdakit.reliability.samplers import PosteriorSample, Sampler
from tdakit.reliability.stats import Accumulator, ScoreDistribution
from tdakit.scoring import TopK, check_k
from tdakit.task import Task


def _on_sample(
    method: AttributionMethod, sample: PosteriorSample, state: dict, k: int
) -> AttributionMethod:
    task: Task = method.task  # type: ignore[assignment]
    runtime: dict[str, Any] = {}
    if method.reseed_per_sample:
        runtime["seed"] = int(method.seed) + 1 + k  # type: ignore[attr-defined]
    if "checkpoints" in method.runtime_params and getattr(method, "checkpoints", None):
        ckpts = sample.checkpoints or [state]
        runtime["checkpoints"] = ckpts
        if hasattr(method, "lrs"):
            lrs = sample.checkpoint_lrs if sample.checkpoints else [method.lrs[-1]]
            runtime["lrs"] = lrs
    return method.clone(task=task.at(state), **runtime)


def score_distribution(
    method: AttributionMethod,
    sampler: Sampler,
    train: DataLike,
    queries: DataLike,
    *,
    test: str = "t",
    alpha: float = 0.05,
    correction: str | None = None,
    keep_samples: bool = False,
    progress: bool = False,
) -> ScoreDistribution:
    """``method``'s scores ``[n_query, n_train]`` under every posterior sample, accumulated
    in one streaming pass (running mean and variance; samples kept only on request).

    The method is rebuilt on each sample with ``method.clone(task=...)`` (ensembles get the
    sample's own checkpoints) and fitted on ``train``.
    """
    require(isinstance(method, AttributionMethod), "method must be a tdakit attribution method.")
    require(isinstance(sampler, Sampler), "sampler must be a tdakit.reliability sampler.")
    acc = Accumulator(keep_samples)
    samples = sampler.draw(method.task, train)  # type: ignore[arg-type]
    bar = tqdm(samples, desc="posterior samples", disable=not progress, leave=False)
    for k, sample in enumerate(bar):
        S = None
        for state in sample.states:
            part = _on_sample(method, sample, state, k).fit(train).scores(queries).double()
            S = part if S is None else S + part
        acc.add(S / len(sample.states), init=sample.init_seed, batch=sample.batch_seed)
    return acc.result(test=test, alpha=alpha, correction=correction)


def loo_distribution(
    recipe: Any,
    train: DataLike,
    queries: DataLike,
    *,
    pairs: Sequence[tuple[int, int]],
    removed: Sequence[int] | torch.Tensor | None = None,
    task: Task | None = None,
    measurement: Any = None,
    executor: Executor | None = None,
    test: str = "t",
    alpha: float = 0.05,
    correction: str | None = None,
    keep_samples: bool = False,
) -> ScoreDistribution:
    """Leave-one-out ground truth ``[n_query, K]`` as a distribution over seed ``pairs``
    ``(init_seed, batch_seed)``; each seed's removals are paired with its own full run."""
    require(len(pairs) >= 2, "loo_distribution needs at least two seed pairs.")
    acc = Accumulator(keep_samples)
    for i, b in pairs:
        loo = leave_one_out(
            recipe,
            train,
            queries,
            removed=removed,
            init_seed=int(i),
            batch_seed=int(b),
            task=task,
            measurement=measurement,
            executor=executor,
        )
        acc.add(loo.scores, init=int(i), batch=int(b))
    return acc.result(test=test, alpha=alpha, correction=correction)


class Explanation(NamedTuple):
    """Top-``k`` training examples per query with their verdicts (all ``[n_query, k]``)."""

    indices: torch.Tensor
    mean: torch.Tensor
    snr: torch.Tensor
    p_value: torch.Tensor
    reliable: torch.Tensor


def explain(dist: ScoreDistribution, k: int = 10, *, opponents: bool = False) -> Explanation:
    """The top proponents (or opponents) by mean score, each with SNR, p-value, verdict."""
    check_k(k, dist.mean.shape[1])
    top = TopK(k, largest=not opponents)
    top.update(0, dist.mean)
    idx, mean = top.result()
    return Explanation(
        idx,
        mean,
        dist.snr.gather(1, idx),
        dist.p_value.gather(1, idx),
        dist.reliable.gather(1, idx),
    )
