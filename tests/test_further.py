"""Further-training gold standard: first-order agreement with Grad-Dot, centring, seeds, t."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tdakit as tda
from tdakit.errors import TdakitError
from tdakit.execution import Executor
from tdakit.groundtruth import further_training
from tdakit.training import TrainingRecipe

SERIAL = Executor(backend="serial", progress=False)
N, D, C = 12, 3, 3


def small_tanh_net(init_seed: int, hidden: int = 6) -> nn.Module:
    return nn.Sequential(nn.Linear(D, hidden), nn.Tanh(), nn.Linear(hidden, C)).double()


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N + 4, D, generator=gen, dtype=torch.float64)
    y = torch.randint(0, C, (N + 4,), generator=gen)
    recipe = TrainingRecipe(
        functools.partial(small_tanh_net, hidden=6),
        lr=0.2,
        momentum=0.0,
        weight_decay=0.01,
        epochs=30,
        batch_size=4,
    )
    model = recipe.train(X[:N], y[:N], init_seed=1, batch_seed=1)
    S = tda.GradDot(tda.Task(model)).fit((X[:N], y[:N])).scores((X[N:], y[N:]))
    return recipe, model, (X[:N], y[:N]), (X[N:], y[N:]), S


def smoothed_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none", label_smoothing=0.2)


def neg_prob(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -outputs.softmax(1).gather(1, targets[:, None]).squeeze(1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _one_step(setup, mechanism: str, lr: float, removed: list[int]) -> torch.Tensor:
    """Gold standard after one full-batch SGD step from the final model ``[n_query, K]``."""
    recipe, model, train, queries, _ = setup
    res = further_training(
        recipe.replace(batch_size=N),
        model,
        train,
        queries,
        removed=removed,
        t=[1],
        unit="step",
        mechanism=mechanism,
        seeds=1,
        lr=lr,
        executor=SERIAL,
    )
    assert res.scores.shape == (1, len(queries[0]), len(removed))
    return res.scores[0]


def test_one_full_batch_step_downweight_is_lr_scaled_grad_dot(setup):
    S, removed = setup[-1], [0, 4, 5, 11]
    errors = [
        _rel(_one_step(setup, "downweight", lr, removed), lr / N * S[:, removed])  # sign included
        for lr in (1e-2, 1e-3)
    ]
    assert errors[1] < 2e-4 and errors[1] < 0.2 * errors[0]


def test_one_full_batch_step_drop_is_centred_grad_dot(setup):
    S, lr, removed = setup[-1], 1e-3, [1, 2, 9]
    # theta_{D minus i} - theta_D = lr / (N - 1) * (g_i - mean_j g_j) after one step
    predicted = lr / (N - 1) * (S[:, removed] - S.mean(1, keepdim=True))
    assert _rel(_one_step(setup, "drop", lr, removed), predicted) < 2e-4


def test_seeds_centring_and_measurement_times(setup):
    recipe, model, train, queries, _ = setup
    kw = {"removed": [0, 3, 6], "mechanism": "drop", "lr_scale": 0.1, "executor": SERIAL}
    res = further_training(
        recipe, model, train, queries, t=[1, 2], unit="epoch", seeds=[0, 1], **kw
    )
    assert res.per_seed.shape == (2, 2, 4, 3) and res.config["lr"] == pytest.approx(0.02)
    assert not torch.allclose(res.per_seed[0], res.per_seed[1])  # batch orders differ
    torch.testing.assert_close(res.scores, res.per_seed.mean(0))
    single = further_training(recipe, model, train, queries, t=[1], unit="epoch", seeds=[1], **kw)
    torch.testing.assert_close(single.scores[0], res.per_seed[1, 0], rtol=0, atol=0)
    steps = further_training(recipe, model, train, queries, t=[3], unit="step", seeds=[1], **kw)
    # 12 examples minus one in batches of 4: epoch 1 is 3 steps for every run
    torch.testing.assert_close(steps.scores[0], single.scores[0], rtol=0, atol=0)
    centred = further_training(
        recipe, model, train, queries, t=[1, 2], unit="epoch", seeds=[0, 1], centre=True, **kw
    )
    torch.testing.assert_close(centred.scores, res.scores - res.scores.mean(-1, keepdim=True))


def test_further_training_rejects_bad_options(setup):
    recipe, model, train, queries, _ = setup
    with pytest.raises(TdakitError, match="mechanism"):
        further_training(recipe, model, train, queries, mechanism="flip", executor=SERIAL)
    with pytest.raises(TdakitError, match="t must"):
        further_training(recipe, model, train, queries, t=[0], executor=SERIAL)
    with pytest.raises(TdakitError, match="sgd or adam"):
        further_training(recipe.replace(optimizer="lbfgs"), model, train, queries, executor=SERIAL)


@pytest.mark.parametrize("measurement", ["loss", neg_prob], ids=["loss", "neg_prob"])
def test_further_training_measures_with_the_tasks_loss_and_measurement(setup, measurement):
    recipe, model, train, queries, _ = setup
    measure = smoothed_ce if measurement == "loss" else measurement
    task = tda.Task(small_tanh_net(0), loss=smoothed_ce, measurement=measurement)
    res = further_training(
        recipe,
        model,
        train,
        queries,
        removed=[5],
        t=[1],
        unit="epoch",
        mechanism="drop",
        seeds=[3],
        task=task,
        executor=SERIAL,
    )
    further = recipe.replace(lr=recipe.lr * 0.1, epochs=1)
    Xq, yq = queries

    def after(indices):  # the same further training, measured by hand
        run = further.run(
            *train,
            indices=indices,
            batch_seed=3,
            init_state=model,
            record_at=[1],
            record_unit="epoch",
            measure=lambda m: measure(m(Xq), yq),
        )
        return run.records[0]

    expect = after(torch.cat([torch.arange(5), torch.arange(6, N)])) - after(None)
    torch.testing.assert_close(res.scores[0, :, 0], expect, rtol=0, atol=1e-12)
    assert expect.abs().max() > 1e-5  # the effect is far above the tolerance
    assert res.config["task"] == task.code_key()
