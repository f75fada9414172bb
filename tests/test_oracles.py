"""Retraining oracles: LOO against closed-form ridge, pairing, subsets, seed ensembles, plain
user training functions, and measuring with a task's own loss and measurement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tdakit as tda
from tdakit.errors import ConfigError, TdakitError
from tdakit.execution import Executor
from tdakit.groundtruth import (
    Measure,
    ensemble_seeds,
    leave_one_out,
    seed_ensemble,
    subset_masks,
    subset_retraining,
)
from tdakit.training import FunctionRecipe, TrainingRecipe, as_recipe

SERIAL = Executor(backend="serial", progress=False)


def query_losses(model, loss, measurement, Xq, yq):
    return Measure(loss, measurement)(model, Xq, yq)


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


# --- plain user training functions ---------------------------------------------------------
CALLS: list[torch.Tensor] = []  # what sgd_linear received (filled in this process only)


def sgd_linear(X, y, indices, init_seed, batch_seed):
    """A user's own training function (module level, so worker processes can import it)."""
    if not (isinstance(indices, torch.Tensor) and indices.dtype == torch.long):
        raise TypeError(f"indices must be a LongTensor of positions, got {indices!r}")
    if indices.ndim != 1:
        raise TypeError(f"indices must be 1-D, got shape {tuple(indices.shape)}")
    CALLS.append(indices.clone())
    torch.manual_seed(init_seed)
    model = nn.Linear(X.shape[1], 3).to(X.dtype)
    gen = torch.Generator().manual_seed(batch_seed)
    for _ in range(4):
        for batch in indices[torch.randperm(len(indices), generator=gen)].split(4):
            model.zero_grad()
            F.cross_entropy(model(X[batch]), y[batch]).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.3 * p.grad
    return model


def smoothed_ce(outputs, targets):
    """A custom per-example training loss (label smoothing)."""
    return F.cross_entropy(outputs, targets, reduction="none", label_smoothing=0.2)


def neg_prob(outputs, targets):
    """A custom loss-like measurement: minus the probability of the label."""
    return -outputs.softmax(1).gather(1, targets[:, None]).squeeze(1)


def _class_data(n=14, n_query=4, seed=5):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n + n_query, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n + n_query,), generator=gen)
    return (X[:n], y[:n]), (X[n:], y[n:])


def _without(n: int, i: int) -> torch.Tensor:
    return torch.cat([torch.arange(i), torch.arange(i + 1, n)])


def test_plain_training_function_drives_leave_one_out_in_worker_processes():
    (X, y), (Xq, yq) = _class_data()
    n, removed = len(X), [2, 9]
    task = tda.Task(nn.Linear(3, 3).double())  # the measurement: cross-entropy at the query
    local = Executor(backend="local", workers=2, progress=False)
    res = leave_one_out(
        sgd_linear,
        (X, y),
        (Xq, yq),
        removed=removed,
        init_seed=1,
        batch_seed=2,
        task=task,
        executor=local,
    )

    def direct(indices):  # the same training in this process, measured by hand
        model = sgd_linear(X, y, indices, 1, 2)
        with torch.no_grad():
            return F.cross_entropy(model(Xq), yq, reduction="none")

    base = direct(torch.arange(n))
    torch.testing.assert_close(res.base_losses, base, rtol=0, atol=1e-12)
    for k, i in enumerate(removed):
        expect = direct(_without(n, i)) - base
        torch.testing.assert_close(res.scores[:, k], expect, rtol=0, atol=1e-12)
    assert res.scores.abs().max() > 1e-4  # the effects are far above the tolerance
    with pytest.raises(ConfigError, match="task="):  # no loss known to measure with
        leave_one_out(sgd_linear, (X, y), (Xq, yq), removed=[0], executor=SERIAL)


def test_plain_training_function_drives_subset_retraining_with_positions():
    (X, y), (Xq, yq) = _class_data()
    CALLS.clear()
    res = subset_retraining(
        sgd_linear,
        (X, y),
        (Xq, yq),
        n_subsets=3,
        fraction=0.5,
        n_models=2,
        seed=1,
        task=tda.Task(nn.Linear(3, 3).double(), measurement="margin"),
        executor=SERIAL,
    )
    assert len(CALLS) == 6
    for j, indices in enumerate(CALLS):  # positions of the subset, never a bool mask
        assert indices.dtype == torch.long and indices.ndim == 1
        assert torch.equal(indices, res.masks[j // 2].nonzero().squeeze(1))
    m, r = 1, 1
    model = sgd_linear(X, y, CALLS[2 * m + r], int(res.seeds[m, r]), int(res.seeds[m, r]))
    with torch.no_grad():
        logits = model(Xq)
    others = logits.clone()
    others[torch.arange(len(yq)), yq] = float("-inf")
    expect = others.logsumexp(1) - logits[torch.arange(len(yq)), yq]  # -margin, by hand
    torch.testing.assert_close(res.all_losses[m, r], expect, rtol=0, atol=1e-12)
    # the same function with a loss needs no task; a bool mask reaches it as positions
    named = subset_retraining(
        FunctionRecipe(sgd_linear, loss="cross_entropy"),
        (X, y),
        (Xq, yq),
        n_subsets=3,
        fraction=0.5,
        n_models=2,
        seed=1,
        measurement="margin",
        executor=SERIAL,
    )
    torch.testing.assert_close(named.all_losses, res.all_losses, rtol=0, atol=0)
    CALLS.clear()
    mask = torch.arange(len(X)) % 3 == 0
    as_recipe(sgd_linear).train(X, y, indices=mask)
    assert CALLS[0].dtype == torch.long and torch.equal(CALLS[0], mask.nonzero().squeeze(1))


# --- measuring with the task's own loss and measurement ----------------------------------
def test_oracles_measure_with_the_tasks_custom_loss_and_measurement():
    (X, y), (Xq, yq) = _class_data()
    recipe = TrainingRecipe("mlp", model_kwargs={"hidden": (5,)}, lr=0.1, epochs=3, batch_size=5)
    template = recipe.build(0, X, y).double()
    full = recipe.train(X, y, init_seed=0, batch_seed=0)
    without = recipe.train(X, y, indices=_without(len(X), 4), init_seed=0, batch_seed=0)
    with torch.no_grad():
        out_full, out_without = full(Xq), without(Xq)

    # measurement="loss": the task's custom training loss, not the recipe's cross-entropy
    task = tda.Task(template, loss=smoothed_ce, measurement="loss")
    res = leave_one_out(recipe, (X, y), (Xq, yq), removed=[4], task=task, executor=SERIAL)
    torch.testing.assert_close(res.base_losses, smoothed_ce(out_full, yq), rtol=0, atol=1e-12)
    expect = smoothed_ce(out_without, yq) - smoothed_ce(out_full, yq)
    torch.testing.assert_close(res.scores[:, 0], expect, rtol=0, atol=1e-12)
    plain = F.cross_entropy(out_full, yq, reduction="none")
    assert (res.base_losses - plain).abs().min() > 1e-3  # really not the recipe's loss
    assert res.config["task"] == task.code_key() and res.config["measurement"] == "loss"

    # a custom measurement callable; params="last_layer" needs no forward pass to measure
    task = tda.Task(template, loss=smoothed_ce, measurement=neg_prob, params="last_layer")
    res = leave_one_out(recipe, (X, y), (Xq, yq), removed=[4], task=task, executor=SERIAL)
    expect = neg_prob(out_without, yq) - neg_prob(out_full, yq)
    torch.testing.assert_close(res.scores[:, 0], expect, rtol=0, atol=1e-12)
    assert expect.abs().max() > 1e-4  # the effect is far above the tolerance
    sub = subset_retraining(
        recipe, (X, y), (Xq, yq), n_subsets=2, seed=3, task=task, executor=SERIAL
    )
    model = recipe.train(X, y, indices=sub.masks[1].nonzero().squeeze(1), init_seed=1, batch_seed=1)
    with torch.no_grad():
        torch.testing.assert_close(sub.losses[1], neg_prob(model(Xq), yq), rtol=0, atol=1e-12)
    with pytest.raises(ConfigError, match="not both"):
        leave_one_out(recipe, (X, y), (Xq, yq), task=task, measurement="margin")
