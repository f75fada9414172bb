"""Reliability: attribution scores as random variables over training runs, with a verdict
(SNR, p-value, reliable yes/no) for every (query, training example) pair."""

from tdakit.reliability.agreement import agreement, ks_distance, wasserstein_distance
from tdakit.reliability.distribution import (
    Explanation,
    explain,
    loo_distribution,
    score_distribution,
)
from tdakit.reliability.samplers import (
    Checkpoints,
    Drawn,
    FurtherTraining,
    Laplace,
    PosteriorSample,
    Retraining,
    Sampler,
)
from tdakit.reliability.stats import Accumulator, ScoreDistribution, correct, p_values

__all__ = [
    "Accumulator",
    "Checkpoints",
    "Drawn",
    "Explanation",
    "FurtherTraining",
    "Laplace",
    "PosteriorSample",
    "Retraining",
    "Sampler",
    "ScoreDistribution",
    "agreement",
    "correct",
    "explain",
    "ks_distance",
    "loo_distribution",
    "p_values",
    "score_distribution",
    "wasserstein_distance",
]
