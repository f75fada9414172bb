"""Reliability: statistics against scipy, streaming against two-pass, samplers hold the other
source of randomness fixed, the variance split adds up, a duplicated query is reliable."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import tdakit as tda
from tdakit.errors import ConfigError
from tdakit.reliability import (
    Accumulator,
    Checkpoints,
    Laplace,
    Retraining,
    agreement,
    correct,
    explain,
    ks_distance,
    p_values,
    score_distribution,
    wasserstein_distance,
)

CALLS: list[tuple[int, int]] = []


def recording_linear(X, y, indices, init_seed, batch_seed):
    """A user training function that records its seeds (module level: picklable)."""
    CALLS.append((init_seed, batch_seed))
    g = torch.Generator().manual_seed(1000 * init_seed + batch_seed)
    model = nn.Linear(X.shape[1], 3).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


def samples(S: int = 12, shape=(3, 5), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(S, *shape, generator=g, dtype=torch.float64) + torch.linspace(
        -1, 1, shape[-1]
    )


def test_streaming_moments_equal_two_pass_and_tests_equal_scipy():
    x = samples()
    acc = Accumulator(keep_samples=True)
    for s in x:
        acc.add(s)
    d = acc.result()
    torch.testing.assert_close(d.mean, x.mean(0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d.sd, x.std(0, unbiased=True), rtol=1e-12, atol=1e-14)
    ref = scipy.stats.ttest_1samp(x.numpy(), 0.0, axis=0).pvalue
    np.testing.assert_allclose(d.p_value.numpy(), ref, rtol=1e-10)
    z = p_values(d.mean, d.sd, d.n, "z")
    np.testing.assert_allclose(z.numpy(), 2 * scipy.stats.norm.sf(np.abs((d.mean / d.sd).numpy())))
    p = torch.rand(50, generator=torch.Generator().manual_seed(3), dtype=torch.float64) ** 3
    np.testing.assert_allclose(
        correct(p, "bh").numpy(), scipy.stats.false_discovery_control(p.numpy()), rtol=1e-12
    )
    np.testing.assert_allclose(correct(p, "bonferroni").numpy(), np.minimum(p.numpy() * 50, 1))
    assert torch.equal(d.reliable, d.p_value < 0.05)
    with pytest.raises(ConfigError, match="correction"):
        correct(p, "holm")


def test_ks_and_wasserstein_equal_scipy():
    a, b = samples(9, (4,), seed=1), samples(13, (4,), seed=2) * 1.5
    ks, w = ks_distance(a, b), wasserstein_distance(a, b)
    for j in range(4):
        assert ks[j] == pytest.approx(scipy.stats.ks_2samp(a[:, j], b[:, j]).statistic)
        assert w[j] == pytest.approx(scipy.stats.wasserstein_distance(a[:, j], b[:, j]))


def test_variance_split_adds_up_and_matches_a_two_way_anova():
    I, B = 3, 4
    g = torch.Generator().manual_seed(0)
    effects_i, effects_b = torch.randn(I, 2, 2, generator=g), torch.randn(B, 2, 2, generator=g)
    acc = Accumulator()
    cells = torch.empty(I, B, 2, 2, dtype=torch.float64)
    for i in range(I):
        for b in range(B):
            cells[i, b] = 10 * effects_i[i] + effects_b[b] + 0.1 * torch.randn(2, 2, generator=g)
            acc.add(cells[i, b], init=i, batch=b)
    split = acc.result().variance_split
    n = I * B
    torch.testing.assert_close(
        split["init"] + split["batch"] + split["interaction"], split["total"]
    )
    torch.testing.assert_close(split["total"], cells.reshape(n, 2, 2).var(0))
    grand = cells.mean((0, 1))
    ss_init = B * ((cells.mean(1) - grand) ** 2).sum(0)
    torch.testing.assert_close(split["init"], ss_init / (n - 1))
    assert (split["init"] > split["batch"]).all()  # the init effect was made larger
    partial = Accumulator()
    partial.add(cells[0, 0], init=0, batch=0)
    partial.add(cells[0, 1], init=0, batch=1)
    assert partial.result().variance_split == {}  # not a full grid: no split claimed


def test_init_only_and_batch_only_sampling_hold_the_other_source_fixed():
    X, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))
    task = tda.Task(nn.Linear(4, 3).double())
    serial = tda.Executor(backend="serial", progress=False)
    for vary, fixed in (("init", 1), ("batch", 0)):
        CALLS.clear()
        draws = list(
            Retraining(recording_linear, 4, vary=vary, seed=5, executor=serial).draw(task, (X, y))
        )
        assert len(draws) == 4 and len(CALLS) == 4
        assert len({c[fixed] for c in CALLS}) == 1  # the other source is held fixed
        assert len({c[1 - fixed] for c in CALLS}) == 4
    # the built-in recipe: identical initial weights and identical batch orders
    recipe = tda.TrainingRecipe("linear", in_shape=(4,), num_classes=3)
    w0 = [recipe.build(5).state_dict() for _ in range(2)]
    assert all(torch.equal(w0[0][k], w0[1][k]) for k in w0[0])
    keep = torch.ones(12, dtype=torch.bool)
    orders = [next(tda.training.epoch_batches(keep, 7, 4)) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*orders, strict=True))
    grid = Retraining(recording_linear, 3, vary="grid").pairs()
    assert sorted(grid) == [(i, b) for i in range(3) for b in range(3)]


def tanh_mlp(init_seed: int) -> nn.Module:
    """No biases, tanh features: for orthogonal inputs the gradient products change sign
    with the initialisation (module level: the recipe pickles it)."""
    return nn.Sequential(nn.Linear(20, 16, bias=False), nn.Tanh(), nn.Linear(16, 3, bias=False))


def test_a_duplicated_query_is_reliable_unrelated_pairs_mostly_not():
    """Training inputs are orthogonal basis vectors; the query duplicates example 0. Its
    Grad-Dot score |g_0|^2 > 0 under every seed; with the unrelated examples the score is
    (r_q . r_i)(h_q . h_i), whose sign follows the random initialisation."""
    X = torch.eye(20, dtype=torch.float64) * 2.0
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(0))
    recipe = tda.TrainingRecipe(tanh_mlp, epochs=2, lr=0.05, batch_size=5)
    task = tda.Task(recipe.train(X, y, init_seed=0))
    serial = tda.Executor(backend="serial", progress=False)
    sampler = Retraining(recipe, 30, vary="init", executor=serial)
    dist = score_distribution(tda.GradDot(task), sampler, (X, y), (X[:1], y[:1]))
    assert bool(dist.reliable[0, 0]) and dist.snr[0, 0] > 3  # the duplicate
    others = dist.reliable[0, 1:].double().mean()
    assert others <= 0.2, others  # unrelated: mostly not reliable
    exp = explain(dist, k=3)
    assert exp.indices[0, 0] == 0 and bool(exp.reliable[0, 0])
    assert torch.equal(exp.mean, dist.mean.gather(1, exp.indices))


def test_checkpoint_and_laplace_samplers():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, 3, generator=g, dtype=torch.float64)
    y = X @ torch.randn(3, 2, generator=g, dtype=torch.float64)
    model = nn.Linear(3, 2, bias=False).double()
    task = tda.Task(model, loss="mse")
    lap = Laplace(4000, prior_precision=2.0, eigen_correction=False, seed=0)
    draws = torch.stack([s.states[0]["weight"].reshape(-1) for s in lap.draw(task, (X, y))])
    # mse on one linear layer: the GGN is exactly (X^T X / N) (x) I, so K-FAC is exact
    A = X.T @ X / len(X)
    precision = len(X) * torch.kron(torch.eye(2, dtype=torch.float64), A) + 2.0 * torch.eye(6)
    cov = torch.linalg.inv(precision)
    emp = torch.cov(draws.T)
    assert (emp - cov).abs().max() < 0.1 * cov.abs().max()
    torch.testing.assert_close(
        draws.mean(0),
        model.weight.detach().reshape(-1),
        atol=4 * cov.diagonal().sqrt().max() / 60,
        rtol=0,
    )
    ck = Checkpoints([model.state_dict(), {"weight": model.weight.detach() + 1}])
    assert len(list(ck.draw(task, (X, y)))) == 2
    with pytest.raises(ConfigError, match=">= 2"):
        Checkpoints([model.state_dict()])


def test_agreement_of_identical_distributions():
    acc = Accumulator(keep_samples=True)
    for s in samples():
        acc.add(s)
    d = acc.result()
    out = agreement(d, d)
    assert out["pearson_mean"] == pytest.approx(1.0) and out["f1"] in (0.0, 1.0)
    assert float(out["ks"].abs().max()) == 0.0 and float(out["wasserstein"].abs().max()) == 0.0
