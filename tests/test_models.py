"""Tests for the reference models and the build_model factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tdakit.errors import TdakitError
from tdakit.models import MLP, LeNet, ResNet9, build_model

CASES = [
    ("linear", (30,), 30),
    ("mlp", (1, 8, 8), 64),
    ("lenet", (1, 8, 8), 84),
    ("lenet", (1, 28, 28), 84),
    ("resnet9", (3, 8, 8), 128),
    ("resnet9", (1, 28, 28), 128),
]


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize(("name", "shape", "width"), CASES)
def test_shapes_and_head_features_contract(name, shape, width):
    model = build_model(name, shape, num_classes=7, seed=0).eval()
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 7
    feats = model.features(x)
    assert feats.shape == (3, width) and model.head.in_features == width
    out = model(x)
    assert out.shape == (3, 7)
    assert torch.allclose(out, model.head(feats), atol=1e-6)


@pytest.mark.parametrize("name", ["linear", "mlp", "lenet", "resnet9"])
def test_seeded_initialisation(name):
    shape = (1, 8, 8)
    a = build_model(name, shape, 10, seed=3)
    b = build_model(name, shape, 10, seed=3)
    c = build_model(name, shape, 10, seed=4)
    assert torch.equal(_params(a), _params(b))
    assert not torch.equal(_params(a), _params(c))


def test_global_rng_untouched():
    state = torch.get_rng_state()
    build_model("mlp", (4,), 2, seed=11)
    assert torch.equal(state, torch.get_rng_state())


def test_mlp_options():
    model = build_model("mlp", (1, 8, 8), 10, seed=0, hidden=(32, 16), activation="tanh")
    assert model.features(torch.rand(2, 1, 8, 8)).shape == (2, 16)
    assert any(isinstance(m, nn.Tanh) for m in model.modules())
    linear_like = MLP(5, 2, hidden=())
    assert linear_like.features(torch.rand(4, 5)).shape == (4, 5)


def test_errors():
    with pytest.raises(TdakitError, match="mlp"):
        build_model("transformer", (3,), 2, seed=0)
    with pytest.raises(TdakitError, match="hidden, activation"):
        build_model("mlp", (3,), 2, seed=0, width=3)
    with pytest.raises(TdakitError, match="activation"):
        MLP(3, 2, activation="sigmoid")
    with pytest.raises(TdakitError, match="channels, height, width"):
        build_model("lenet", (64,), 10, seed=0)
    with pytest.raises(TdakitError, match="in_shape"):
        build_model("mlp", (0, 3), 2, seed=0)
    with pytest.raises(TdakitError, match="expects 64 input features"):
        MLP(64, 10)(torch.rand(2, 10))
    with pytest.raises(TdakitError, match="LeNet expects"):
        LeNet(1, 10, image_size=8)(torch.rand(2, 1, 28, 28))
    with pytest.raises(TdakitError, match="ResNet9 expects"):
        ResNet9(3, 10)(torch.rand(2, 1, 8, 8))


def test_resnet9_batchnorm_eval_is_per_example():
    model = ResNet9(1, 10, width=4).eval()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    full = model(x)
    single = torch.cat([model(x[i : i + 1]) for i in range(5)])
    assert torch.allclose(full, single, atol=1e-5)
