"""Training recipe: contract, paired batch order, separate seeds, optimisers, continuation."""

from __future__ import annotations

import copy
import functools
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tdakit.errors import TdakitError
from tdakit.execution import content_key
from tdakit.fingerprints import describe_callable
from tdakit.training import TrainingRecipe, epoch_batches
from tdakit.training.loop import _FirstOrder


def _data(n=24, d=3, classes=3, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=dtype)
    return X, torch.randint(0, classes, (n,), generator=gen)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _linear_factory(init_seed: int, d: int = 3) -> nn.Module:
    return nn.Linear(d, 3)


def per_example_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def smoothed_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none", label_smoothing=0.3)


def abs_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.squeeze(1) - targets).abs()


RECIPE = TrainingRecipe("mlp", model_kwargs={"hidden": (8,)}, lr=0.1, epochs=2, batch_size=5)


def test_recipe_is_picklable_and_keyed_by_config():
    again = pickle.loads(pickle.dumps(RECIPE))
    assert again == RECIPE and again.config() == RECIPE.config()
    assert hash(again) == hash(RECIPE) and len({RECIPE, again, RECIPE.replace(lr=1.0)}) == 2
    assert RECIPE.replace(lr=0.2).config() != RECIPE.config()
    factory = TrainingRecipe(functools.partial(_linear_factory, d=3))
    assert pickle.loads(pickle.dumps(factory)).config() == factory.config()


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"loss": "hinge"}, "Unknown loss"),
        ({"optimizer": "rmsprop"}, "Unknown optimizer"),
        ({"lr": 0}, "lr must be"),
        ({"epochs": 0}, "epochs must be"),
        ({"schedule": "step"}, "Unknown schedule"),
        ({"model": "vgg"}, "Unknown model"),
        ({"model": lambda seed: nn.Linear(3, 3)}, "cannot be pickled"),
        ({"momentum": 1.0}, "momentum must be"),
    ],
)
def test_bad_recipes_are_rejected(kw, fragment):
    with pytest.raises(TdakitError, match=fragment):
        TrainingRecipe(**kw)


def test_bad_indices_and_fields_are_rejected():
    X, y = _data()
    with pytest.raises(TdakitError, match="repeated"):
        RECIPE.train(X, y, indices=[1, 1, 2])
    with pytest.raises(TdakitError, match="lie in"):
        RECIPE.train(X, y, indices=[0, 99])
    with pytest.raises(TdakitError, match="Unknown recipe field"):
        RECIPE.replace(learning_rate=1.0)
    with pytest.raises(TdakitError, match="record_at"):
        RECIPE.run(X, y, record_at=[999], measure=_flat)


def test_leave_one_out_batch_order_is_the_full_order_minus_i():
    n, i = 23, 7
    full = epoch_batches(torch.ones(n, dtype=torch.bool), batch_seed=3, batch_size=4)
    keep = torch.ones(n, dtype=torch.bool)
    keep[i] = False
    loo = epoch_batches(keep, batch_seed=3, batch_size=4)
    for _ in range(3):  # several epochs: each has its own permutation
        f, l = torch.cat(next(full)), torch.cat(next(loo))
        assert sorted(f.tolist()) == list(range(n))
        assert torch.equal(l, f[f != i])
    other = torch.cat(next(epoch_batches(torch.ones(n, dtype=torch.bool), 4, 4)))
    assert not torch.equal(other, torch.cat(next(epoch_batches(torch.ones(n, dtype=bool), 3, 4))))


def test_init_and_batch_seeds_are_separate_knobs():
    X, y = _data()

    def run(init_seed, batch_seed):
        out = RECIPE.run(
            X, y, init_seed=init_seed, batch_seed=batch_seed, record_at=[0], measure=_flat
        )
        return out.records[0], _flat(out.model)

    init_a, final_a = run(0, 0)
    init_b, final_b = run(0, 1)  # same init, other batch order
    init_c, _ = run(1, 0)  # other init, same batch order
    _, final_a2 = run(0, 0)
    assert torch.equal(init_a, init_b) and not torch.equal(final_a, final_b)
    assert not torch.equal(init_a, init_c)
    assert torch.equal(final_a, final_a2)  # same seeds, same numbers
    built = RECIPE.build(0, X, y).double()
    assert torch.equal(_flat(built), init_a)


def test_train_returns_eval_model_on_data_dtype_and_respects_indices():
    X, y = _data()
    model = RECIPE.train(X, y, indices=torch.arange(10))
    assert not model.training and next(model.parameters()).dtype == torch.float64
    # an example outside `indices` has no influence at all on the trained model
    X2 = X.clone()
    X2[15] = 100.0
    assert torch.equal(_flat(RECIPE.train(X2, y, indices=torch.arange(10))), _flat(model))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_first_order_optimisers_match_torch_optim(kind):
    recipe = TrainingRecipe(optimizer=kind, lr=0.05, momentum=0.9, weight_decay=0.01)
    torch.manual_seed(0)
    ours = nn.Linear(4, 2).double()
    ref = copy.deepcopy(ours)
    opt = _FirstOrder(recipe, list(ours.parameters()))
    if kind == "sgd":
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    else:
        ref_opt = torch.optim.Adam(ref.parameters(), lr=0.05, weight_decay=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            model(x).pow(2).sum().backward()
            o.step()
    torch.testing.assert_close(_flat(ours), _flat(ref), rtol=0, atol=1e-14)


def test_lbfgs_ridge_reaches_the_closed_form():
    n, d, lam = 30, 4, 0.1
    X, _ = _data(n, d)
    y = X @ torch.arange(1.0, d + 1, dtype=torch.float64) + 0.1 * X[:, 0] ** 2
    recipe = TrainingRecipe(
        "linear",
        loss="mse",
        optimizer="lbfgs",
        lr=1.0,
        weight_decay=lam,
        epochs=2,
        batch_size=n,
        lbfgs_iters=200,
    )
    model = recipe.train(X, y)
    A = np.c_[X.numpy(), np.ones(n)]
    # minimiser of mean 0.5 * (a.theta - y)^2 + lam / 2 * |theta|^2 (bias decayed too)
    theta = np.linalg.solve(A.T @ A / n + lam * np.eye(d + 1), A.T @ y.numpy() / n)
    got = np.r_[model.head.weight.detach().numpy().ravel(), model.head.bias.detach().numpy()]
    np.testing.assert_allclose(got, theta, rtol=0, atol=1e-7)


def test_steps_schedule_checkpoints_and_records():
    X, y = _data(n=20)
    recipe = RECIPE.replace(steps=7, schedule="linear", checkpoint_every=1)
    run = recipe.run(X, y, record_at=[0, 3, 7], measure=_flat)
    assert run.steps == 7 and len(run.records) == 3  # 4 steps per epoch: 2 epochs
    assert len(run.checkpoints) == 2 and len(run.losses) == 2
    assert run.checkpoint_lrs[0] == pytest.approx(0.1 * (1 - 3 / 7))  # lr of the 4th step
    assert torch.equal(run.records[2], _flat(run.model))
    assert torch.equal(run.checkpoints[-1]["head.weight"], run.model.head.weight)
    by_epoch = RECIPE.run(X, y, record_at=[1, 2], record_unit="epoch", measure=_flat)
    assert torch.equal(by_epoch.records[1], _flat(by_epoch.model))


def test_continue_training_and_downweight_with_zero_epsilon():
    X, y = _data()
    base = RECIPE.train(X, y)
    more = RECIPE.replace(lr=0.01, epochs=1)
    a = more.train(X, y, init_state=base, batch_seed=5)
    b = more.train(X, y, init_state=base.state_dict(), batch_seed=5, downweight=[3], epsilon=0.0)
    c = more.train(X, y, init_state=base, batch_seed=5, downweight=[3])
    assert torch.equal(_flat(a), _flat(b))
    assert not torch.equal(_flat(a), _flat(c))
    assert not torch.equal(_flat(a), _flat(base))
    with pytest.raises(TdakitError, match="does not fit"):
        more.train(X, y, init_state={"w": torch.zeros(1)})


def test_nonfinite_loss_is_reported():
    X, y = _data()
    with pytest.raises(TdakitError, match="non-finite"):
        RECIPE.replace(lr=1e30, momentum=0.0).train(X * 1e10, y)


def test_callable_loss_trains_and_is_described_in_the_config():
    X, y = _data()
    custom = RECIPE.replace(loss=per_example_ce)  # integer labels reach the callable as labels
    run = custom.run(X, y, init_seed=2, batch_seed=3)
    assert run.losses[-1] < run.losses[0]
    ref = RECIPE.train(X, y, init_seed=2, batch_seed=3)  # the named loss, same computation
    assert torch.equal(_flat(run.model), _flat(ref))
    smoothed = RECIPE.replace(loss=smoothed_ce)
    assert not torch.equal(_flat(smoothed.train(X, y, init_seed=2, batch_seed=3)), _flat(ref))

    config = custom.config()
    assert config["loss"] == describe_callable(per_example_ce)
    assert config["loss"]["name"].endswith("per_example_ce") and config["loss"]["code"]
    assert json.loads(json.dumps(config)) == config  # JSON-able: part of every cache key
    again = pickle.loads(pickle.dumps(custom))
    assert again.config() == config and hash(again) == hash(custom)
    keys = {content_key(r) for r in (RECIPE, custom, smoothed)}
    assert len(keys) == 3  # each loss its own cache entries

    # float targets with a callable loss: regression on the recipe's dtype
    Xr = X[:, :2]
    yr = Xr @ torch.tensor([1.0, -2.0], dtype=torch.float64)
    reg = TrainingRecipe("linear", loss=abs_error, lr=0.2, momentum=0.0, epochs=10, batch_size=6)
    run = reg.run(Xr, yr)
    assert run.model.head.out_features == 1 and run.losses[-1] < 0.5 * run.losses[0]
