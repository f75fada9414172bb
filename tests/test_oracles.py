"""Retraining oracles: LOO against closed-form ridge, pairing, subsets, seed ensembles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdakit.errors import TdakitError
from tdakit.groundtruth import (
    Executor,
    TrainingRecipe,
    ensemble_seeds,
    leave_one_out,
    seed_ensemble,
    subset_masks,
    subset_retraining,
)
from tdakit.groundtruth.jobs import query_losses

SERIAL = Executor(backend="serial", progress=False)


def _ridge_data(n=16, d=3, n_query=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n + n_query, d, generator=gen, dtype=torch.float64)
    w = torch.randn(d, generator=gen, dtype=torch.float64)
    y = X @ w + 0.5 * torch.randn(n + n_query, generator=gen, dtype=torch.float64)
    return (X[:n], y[:n]), (X[n:], y[n:])


def _ridge_fit(A: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """argmin mean 0.5 * (a.theta - b)^2 + lam / 2 * |theta|^2 (intercept column included)."""
    return np.linalg.solve(A.T @ A / len(A) + lam * np.eye(A.shape[1]), A.T @ b / len(A))


def test_loo_equals_closed_form_ridge():
    (X, y), (Xq, yq) = _ridge_data()
    lam = 0.05
    recipe = TrainingRecipe(
        "linear",
        loss="mse",
        optimizer="lbfgs",
        lr=1.0,
        weight_decay=lam,
        epochs=2,
        batch_size=len(X),
        lbfgs_iters=200,
    )
    res = leave_one_out(recipe, (X, y), (Xq, yq), removed=[0, 3, 7, 15], executor=SERIAL)
    A, Aq = np.c_[X.numpy(), np.ones(len(X))], np.c_[Xq.numpy(), np.ones(len(Xq))]

    def query_loss(theta):
        return 0.5 * (Aq @ theta - yq.numpy()) ** 2

    base = query_loss(_ridge_fit(A, y.numpy(), lam))
    ref = np.stack(
        [
            query_loss(_ridge_fit(np.delete(A, i, 0), np.delete(y.numpy(), i), lam)) - base
            for i in (0, 3, 7, 15)
        ],
        axis=1,
    )
    assert res.scores.shape == (5, 4) and res.removed.tolist() == [0, 3, 7, 15]
    assert np.abs(ref).max() > 1e-3  # the effects are far above the tolerance
    np.testing.assert_allclose(res.scores.numpy(), ref, rtol=0, atol=2e-8)
    np.testing.assert_allclose(res.base_losses.numpy(), base, rtol=0, atol=2e-8)


def test_loo_runs_are_paired_and_signed_like_methods():
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(20, 4, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    recipe = TrainingRecipe("mlp", model_kwargs={"hidden": (8,)}, lr=0.1, epochs=3, batch_size=6)
    queries = (X[:3], y[:3])
    res = leave_one_out(
        recipe,
        (X, y),
        queries,
        removed=[0, 11],
        init_seed=4,
        batch_seed=9,
        measurement="margin",
        executor=SERIAL,
    )
    full = recipe.train(X, y, init_seed=4, batch_seed=9)
    base = query_losses(full, "cross_entropy", "margin", *queries)
    torch.testing.assert_close(res.base_losses, base, rtol=0, atol=0)
    for k, i in enumerate((0, 11)):
        keep = torch.arange(20) != i
        model = recipe.train(X, y, indices=keep.nonzero().squeeze(1), init_seed=4, batch_seed=9)
        # positive = removing i raised the loss-like objective (-margin) of the query
        expect = query_losses(model, "cross_entropy", "margin", *queries) - base
        torch.testing.assert_close(res.scores[:, k], expect, rtol=0, atol=0)
    # query 0 is training example 0: removing it raises its own -margin (helpful, positive)
    assert res.scores[0, 0] > 0


def test_subset_masks_are_seeded_and_exact():
    masks = subset_masks(11, 6, 0.5, seed=3)
    assert masks.shape == (6, 11) and masks.dtype == torch.bool
    assert masks.sum(1).tolist() == [6] * 6  # round(5.5) == 6
    assert torch.equal(masks, subset_masks(11, 6, 0.5, seed=3))
    assert not torch.equal(masks, subset_masks(11, 6, 0.5, seed=4))
    with pytest.raises(TdakitError, match="fraction"):
        subset_masks(11, 6, 1.5)


def test_subset_retraining_averages_models_with_explicit_seeds():
    gen = torch.Generator().manual_seed(2)
    X, y = torch.randn(18, 3, generator=gen), torch.randint(0, 2, (18,), generator=gen)
    recipe = TrainingRecipe("linear", lr=0.2, epochs=3, batch_size=4)
    res = subset_retraining(
        recipe,
        (X, y),
        (X[:4], y[:4]),
        n_subsets=3,
        fraction=0.5,
        n_models=2,
        seed=7,
        model_seed=10,
        executor=SERIAL,
    )
    assert torch.equal(res.masks, subset_masks(18, 3, 0.5, seed=7))
    assert res.losses.shape == (3, 4) and res.all_losses.shape == (3, 2, 4)
    assert res.seeds.tolist() == [[10, 11], [12, 13], [14, 15]]
    m, r = 2, 1
    model = recipe.train(
        X, y, indices=res.masks[m].nonzero().squeeze(1), init_seed=15, batch_seed=15
    )
    torch.testing.assert_close(
        res.all_losses[m, r], query_losses(model, "cross_entropy", "loss", X[:4], y[:4])
    )
    torch.testing.assert_close(res.losses, res.all_losses.mean(1))
    assert res.config["fraction"] == 0.5 and res.config["n_models"] == 2


def test_seed_ensembles_vary_one_knob_at_a_time():
    assert ensemble_seeds(3, "init", 5) == [(5, 5), (6, 5), (7, 5)]
    assert ensemble_seeds(3, "batch", 5) == [(5, 5), (5, 6), (5, 7)]
    assert ensemble_seeds(2, "both", 0) == [(0, 0), (1, 1)]
    gen = torch.Generator().manual_seed(3)
    X, y = torch.randn(15, 3, generator=gen), torch.randint(0, 3, (15,), generator=gen)
    recipe = TrainingRecipe("mlp", model_kwargs={"hidden": (5,)}, lr=0.1, epochs=3, batch_size=4)
    ens = seed_ensemble(
        recipe, (X, y), n_models=2, vary="batch", seed=1, keep_last=2, executor=SERIAL
    )
    assert ens.seeds == [(1, 1), (1, 2)]
    for (init_seed, batch_seed), state, ckpts in zip(
        ens.seeds, ens.states, ens.checkpoints, strict=True
    ):
        ref = recipe.train(X, y, init_seed=init_seed, batch_seed=batch_seed)
        for name, value in ref.state_dict().items():
            assert torch.equal(state[name], value)
        assert len(ckpts) == 2 and torch.equal(ckpts[-1]["head.weight"], state["head.weight"])
    assert not torch.equal(ens.states[0]["head.weight"], ens.states[1]["head.weight"])
    models = ens.models(recipe, (X, y))
    assert len(models) == 2 and not models[0].training
    with pytest.raises(TdakitError, match="vary"):
        ensemble_seeds(2, "data")
