"""Shared tiny models and data for fast float64 reference tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def tiny_mlp(
    d_in: int = 5,
    hidden: int = 7,
    classes: int = 3,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
    return model.to(dtype)


def tiny_data(
    n: int = 30, d_in: int = 5, classes: int = 3, seed: int = 1, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=gen, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=gen)
    return X, y


@pytest.fixture
def mlp() -> nn.Module:
    return tiny_mlp()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return tiny_data()
