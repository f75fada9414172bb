"""Per-example gradients equal a Python loop of single-example autograd gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdakit as tda
from conftest import tiny_data, tiny_mlp
from tdakit.data.sources import as_source
from tdakit.features import batch_gradients, per_example_grads


def gradient_features(
    task: tda.Task, X, y, *, objective="train", projector=None, batch_size: int = 128
) -> torch.Tensor:
    """Per-example gradient features of a whole data set, batch by batch."""
    batches = as_source((X, y)).batches(task, batch_size)
    return torch.cat(
        [
            batch_gradients(
                task, b.inputs, b.targets, objective=objective, projector=projector, start=b.start
            )
            for b in batches
        ]
    )


def loop_grads(model: nn.Module, X, y, fn) -> torch.Tensor:
    """Reference: one autograd call per example, flattened in parameter order."""
    rows = []
    for i in range(len(X)):
        model.zero_grad()
        fn(model(X[i : i + 1]), y[i : i + 1]).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_per_example_gradients_match_loop(loss: str) -> None:
    model = tiny_mlp()
    X, y = tiny_data()
    if loss == "mse":
        y = torch.randn(len(X), 3, dtype=torch.float64)
        ref_fn = lambda out, t: 0.5 * ((out - t) ** 2).sum()  # noqa: E731
    else:
        ref_fn = lambda out, t: torch.nn.functional.cross_entropy(out, t)  # noqa: E731
    task = tda.Task(model, loss=loss)
    G = gradient_features(task, X, y, batch_size=7)
    ref = loop_grads(model, X, y, ref_fn)
    assert G.shape == (len(X), task.num_params)
    assert torch.linalg.norm(G - ref) / torch.linalg.norm(ref) < 1e-8


def test_query_objective_margin_is_negated_margin_gradient() -> None:
    model, (X, y) = tiny_mlp(), tiny_data()
    task = tda.Task(model, measurement="margin")

    def margin(out, t):
        z = out[0]
        others = torch.cat([z[: t[0]], z[t[0] + 1 :]])
        return z[t[0]] - torch.logsumexp(others, 0)

    G = gradient_features(task, X, y, objective="query")
    ref = -loop_grads(model, X, y, margin)  # loss-like orientation: -margin
    assert torch.allclose(G, ref, rtol=1e-10, atol=1e-12)


def test_logit_measurement_and_last_layer_params() -> None:
    model, (X, y) = tiny_mlp(), tiny_data()
    task = tda.Task(model, measurement=2, params="last_layer")
    task.bind(X)  # "last_layer" follows the forward pass
    assert task.param_names == ("2.weight", "2.bias")
    blocks = per_example_grads(task, X, y, objective="query")
    # d(-z_2)/dW2 = -e_2 h^T ; d(-z_2)/db2 = -e_2
    h = torch.tanh(model[0](X))
    expected_w = torch.zeros(len(X), 3, 7, dtype=X.dtype)
    expected_w[:, 2, :] = -h
    assert torch.allclose(blocks["2.weight"], expected_w, atol=1e-12)
    assert torch.allclose(blocks["2.bias"][:, 2], -torch.ones(len(X), dtype=X.dtype))


def test_named_module_selection_only_differentiates_those_params() -> None:
    model, (X, y) = tiny_mlp(), tiny_data()
    full = gradient_features(tda.Task(model), X, y)
    first = gradient_features(tda.Task(model, params=["0"]), X, y)
    n_first = sum(p.numel() for p in model[0].parameters())
    assert torch.allclose(first, full[:, :n_first], atol=1e-12)


def test_custom_loss_is_not_rescaled() -> None:
    model, (X, y) = tiny_mlp(), tiny_data()

    def scaled_ce(out, t):
        return 3.0 * torch.nn.functional.cross_entropy(out, t, reduction="none")

    G3 = gradient_features(tda.Task(model, loss=scaled_ce), X, y)
    G1 = gradient_features(tda.Task(model), X, y)
    assert torch.allclose(G3, 3.0 * G1, rtol=1e-12)


def test_eval_mode_for_batchnorm_and_mode_restored() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).double()
    model.train()
    X = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (10,))
    task = tda.Task(model)
    G = gradient_features(task, X, y)
    assert model.training  # restored
    model.eval()
    ref = loop_grads(model, X, y, torch.nn.functional.cross_entropy)
    assert torch.allclose(G, ref, rtol=1e-9, atol=1e-12)


def test_fingerprint_changes_with_weights() -> None:
    model = tiny_mlp()
    task = tda.Task(model)
    fp = task.fingerprint()
    assert fp == tda.Task(tiny_mlp()).fingerprint()
    with torch.no_grad():
        model[0].bias[0] += 1e-6
    assert task.fingerprint() != fp


@pytest.mark.parametrize("params", ["all", "last_layer", ["0.weight", "2.bias"]])
@pytest.mark.parametrize("objective", ["train", "query"])
def test_layer_fast_path_equals_vmap_path(monkeypatch, params, objective) -> None:
    import tdakit.features.grads as grads_mod

    model, (X, y) = tiny_mlp(), tiny_data()
    task = tda.Task(model, measurement="margin", params=params)
    task.bind(X)
    assert grads_mod.layer_layout(task) is not None
    fast = gradient_features(task, X, y, objective=objective, batch_size=8)
    assert task.gradient_paths == {objective: "layers"}
    fast_blocks = per_example_grads(task, X, y, objective)
    proj = tda.Projector(16, seed=0)
    fast_proj = gradient_features(task, X, y, objective=objective, projector=proj)
    monkeypatch.setattr(grads_mod, "layer_layout", lambda task: None)
    task = tda.Task(model, measurement="margin", params=params)  # path not yet decided
    slow = gradient_features(task, X, y, objective=objective, batch_size=8)
    assert task.gradient_paths == {objective: "vmap"}
    assert torch.allclose(fast, slow, rtol=1e-12, atol=1e-14)
    slow_blocks = per_example_grads(task, X, y, objective)
    assert all(torch.allclose(fast_blocks[k], slow_blocks[k], atol=1e-14) for k in slow_blocks)
    slow_proj = gradient_features(task, X, y, objective=objective, projector=proj)
    assert torch.allclose(fast_proj, slow_proj, rtol=1e-12, atol=1e-14)


def test_layer_fast_path_falls_back_for_shared_layers() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(5, 5).double()

        def forward(self, x):
            return self.lin(torch.tanh(self.lin(x)))

    torch.manual_seed(0)
    model = Twice()
    X, y = tiny_data(n=9)
    task = tda.Task(model)
    G = gradient_features(task, X, y)
    assert task.gradient_paths == {"train": "vmap"}
    ref = loop_grads(model, X, y, torch.nn.functional.cross_entropy)
    assert torch.allclose(G, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("padding", [0, 1, "same"])
def test_conv_fast_path_matches_loop_and_vmap(monkeypatch, padding) -> None:
    import tdakit.features.grads as grads_mod

    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=padding, stride=1 if padding == "same" else 2),
        nn.ReLU(),
        nn.Conv2d(3, 4, 2, dilation=2 if padding == "same" else 1, bias=False),
        nn.Flatten(),
        nn.LazyLinear(3),
    ).double()
    X = torch.randn(6, 2, 9, 9, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=gen)
    model(X)  # materialise the lazy layer
    task = tda.Task(model)
    assert grads_mod.layer_layout(task) is not None
    fast = gradient_features(task, X, y, batch_size=4)
    assert task.gradient_paths == {"train": "layers"}
    ref = loop_grads(model, X, y, torch.nn.functional.cross_entropy)
    assert torch.allclose(fast, ref, rtol=1e-10, atol=1e-12)
    blocks = per_example_grads(task, X, y)
    monkeypatch.setattr(grads_mod, "layer_layout", lambda task: None)
    slow = per_example_grads(task, X, y)
    assert all(torch.allclose(blocks[k], slow[k], atol=1e-12) for k in slow)
