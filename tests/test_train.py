"""Tests for the seeded training helper."""

from __future__ import annotations

import pytest
import torch

from tdakit.data import load_digits, make_classification, make_regression
from tdakit.errors import TdakitError
from tdakit.models import build_model
from tdakit.training import TrainResult, train_model


@pytest.fixture(scope="module")
def digits():
    return load_digits(test_size=0.25, seed=0)


def _state(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_training_reduces_loss_on_digits(digits):
    model = build_model("mlp", digits.image_shape, 10, seed=0)
    res = train_model(model, digits.X_train, digits.y_train, epochs=8, progress=False)
    assert isinstance(res, TrainResult) and res.model is model
    assert len(res.losses) == 8
    assert res.losses[-1] < 0.3 * res.losses[0]
    assert not model.training
    acc = (model(digits.X_test).argmax(1) == digits.y_test).float().mean()
    assert acc > 0.9


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_same_seed_same_parameters(optimizer):
    data = make_classification(n_train=100, n_test=10, n_features=6, n_classes=3, seed=0)

    def run(seed):
        model = build_model("mlp", (6,), 3, seed=0, hidden=(16,))
        lr = 0.01 if optimizer == "adam" else 0.05
        train_model(
            model,
            data.X_train,
            data.y_train,
            epochs=3,
            batch_size=16,
            lr=lr,
            optimizer=optimizer,
            seed=seed,
            progress=False,
        )
        return _state(model)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_checkpoints(digits):
    model = build_model("linear", digits.image_shape, 10, seed=0)
    res = train_model(
        model,
        digits.X_train[:200],
        digits.y_train[:200],
        epochs=5,
        lr=0.1,
        checkpoint_every=2,
        progress=False,
    )
    assert len(res.checkpoints) == 2 and res.checkpoint_lrs == [0.1, 0.1]
    ckpt = res.checkpoints[-1]
    assert set(ckpt) == set(model.state_dict())
    assert not any(v.requires_grad for v in ckpt.values())
    # copies: later training does not alter them, and they differ from the final state
    assert not torch.equal(ckpt["head.weight"], model.head.weight)
    before = ckpt["head.weight"].clone()
    with torch.no_grad():
        model.head.weight.add_(1.0)
    assert torch.equal(ckpt["head.weight"], before)


def test_mse_regression():
    data = make_regression(n_train=128, n_test=16, n_features=5, noise=0.01, seed=0)
    model = build_model("linear", (5,), 1, seed=0)
    res = train_model(
        model,
        data.X_train,
        data.y_train,
        loss="mse",
        epochs=15,
        lr=0.02,
        batch_size=16,
        progress=False,
    )
    assert res.losses[-1] < 0.01 < res.losses[0]


def test_bad_inputs():
    model = build_model("linear", (3,), 2, seed=0)
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(10, 3, generator=g), torch.randint(0, 2, (10,), generator=g)
    with pytest.raises(TdakitError, match="same length"):
        train_model(model, X, y[:9], progress=False)
    with pytest.raises(TdakitError, match="empty"):
        train_model(model, X[:0], y[:0], progress=False)
    with pytest.raises(TdakitError, match="sgd, adam"):
        train_model(model, X, y, optimizer="rmsprop", progress=False)
    with pytest.raises(TdakitError, match="cross_entropy, mse"):
        train_model(model, X, y, loss="hinge", progress=False)
    with pytest.raises(TdakitError, match="integer class labels"):
        train_model(model, X, y.float(), progress=False)
    with pytest.raises(TdakitError, match="largest label"):
        train_model(model, X, y + 1, progress=False)
    with pytest.raises(TdakitError, match="epochs"):
        train_model(model, X, y, epochs=0, progress=False)
    with pytest.raises(TdakitError, match="lr"):
        train_model(model, X, y, lr=-1.0, progress=False)
    with pytest.raises(TdakitError, match="shape"):
        train_model(
            build_model("linear", (3,), 2, seed=0), X, y.float(), loss="mse", progress=False
        )


def test_non_finite_loss_names_epoch():
    model = build_model("linear", (3,), 1, seed=0)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(32, 3, generator=g) * 100
    y = torch.randn(32, generator=g)
    with pytest.raises(TdakitError, match=r"in epoch \d+; .*try a lower lr"):
        train_model(model, X, y, loss="mse", lr=1e6, momentum=0.0, epochs=3, progress=False)
    assert not model.training


def test_follows_model_dtype_and_shows_progress():
    data = make_classification(n_train=40, n_test=4, n_features=3, n_classes=2, seed=0)
    model = build_model("linear", (3,), 2, seed=0).double()
    res = train_model(model, data.X_train, data.y_train, epochs=2, progress=True)
    assert len(res.losses) == 2 and model.head.weight.dtype == torch.float64
