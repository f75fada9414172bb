"""Grad-Dot, Grad-Cos, TracIn, representation similarity and the random baseline."""

from __future__ import annotations

import pytest
import torch

import tdakit as tda
from conftest import tiny_data, tiny_mlp
from test_grads import loop_grads

CE = torch.nn.functional.cross_entropy


@pytest.fixture
def setup():
    model = tiny_mlp()
    X, y = tiny_data(n=30)
    Xq, yq = tiny_data(n=6, seed=9)
    return model, (X, y), (Xq, yq)


def test_grad_dot_and_cos_equal_explicit_formulas(setup) -> None:
    model, (X, y), (Xq, yq) = setup
    task = tda.Task(model)
    G, Gq = loop_grads(model, X, y, CE), loop_grads(model, Xq, yq, CE)
    S = tda.GradDot(task, block_size=7).fit((X, y)).scores((Xq, yq))
    assert S.shape == (6, 30)
    assert torch.allclose(S, Gq @ G.T, rtol=1e-10, atol=1e-12)
    C = tda.GradCos(task, block_size=7).fit((X, y)).scores((Xq, yq))
    ref = (Gq @ G.T) / torch.outer(Gq.norm(dim=1), G.norm(dim=1))
    assert torch.allclose(C, ref, rtol=1e-10, atol=1e-12)


def test_tracin_sums_lr_weighted_checkpoint_dots(setup) -> None:
    model, (X, y), (Xq, yq) = setup
    ckpts = [tiny_mlp(seed=s) for s in (3, 4, 5)]
    lrs = [0.3, 0.1, 0.05]
    S = tda.TracIn(tda.Task(model), ckpts, lrs).fit((X, y)).scores((Xq, yq))
    ref = sum(
        lr * loop_grads(m, Xq, yq, CE) @ loop_grads(m, X, y, CE).T
        for m, lr in zip(ckpts, lrs, strict=True)
    )
    assert torch.allclose(S, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "method", ["GradDot", "GradCos", "TracIn", "RepresentationSimilarity", "RandomBaseline"]
)
def test_top_k_equals_argsort_of_dense_scores(setup, method: str) -> None:
    model, (X, y), (Xq, yq) = setup
    task = tda.Task(model)
    extra = {"checkpoints": [model.state_dict()], "lrs": [0.1]} if method == "TracIn" else {}
    m = getattr(tda, method)(task, block_size=4, **extra).fit((X, y))
    S = m.scores((Xq, yq))
    for opponents in (False, True):
        idx, val = m.top_k((Xq, yq), k=5, opponents=opponents)
        order = S.argsort(dim=1, descending=not opponents, stable=True)[:, :5]
        assert torch.equal(idx, order)
        assert torch.allclose(val, S.gather(1, order))


@pytest.mark.parametrize("method", ["GradDot", "GradCos", "TracIn", "RepresentationSimilarity"])
def test_self_scores_are_the_diagonal(setup, method: str) -> None:
    model, (X, y), _ = setup
    task = tda.Task(model)
    extra = {"checkpoints": [model.state_dict()], "lrs": [0.1]} if method == "TracIn" else {}
    m = getattr(tda, method)(task, block_size=8, **extra).fit((X, y))
    assert torch.allclose(m.self_scores(), torch.diagonal(m.scores((X, y))), rtol=1e-10)


def test_duplicate_of_a_training_example_is_its_top_proponent() -> None:
    """Sign convention: a query identical to training example i is helped most by i.

    Grad-Cos: cos = 1 only for the duplicate. Grad-Dot/TracIn: by Cauchy-Schwarz
    g_q.g_i <= |g_q|^2 when no training gradient is longer than g_q, with equality only
    for the duplicate, so we duplicate the examples with the longest gradients.
    """
    model = tiny_mlp(seed=2)
    X, y = tiny_data(n=40, seed=3)
    task = tda.Task(model)
    norms = loop_grads(model, X, y, CE).norm(dim=1)
    longest = norms.argsort(descending=True)[:1].tolist()
    cases = [
        (tda.GradCos(task), [5, 17, 33]),
        (tda.GradDot(task), longest),
        (tda.TracIn(task, [model.state_dict()], [0.1]), longest),
    ]
    for method, dup in cases:
        Xq, yq = X[dup].clone(), y[dup].clone()
        idx, val = method.fit((X, y)).top_k((Xq, yq), k=1)
        assert idx[:, 0].tolist() == dup
        assert (val > 0).all()
        worst, _ = method.top_k((Xq, yq), k=1, opponents=True)
        assert not set(worst[:, 0].tolist()) & set(dup)


def test_grad_dot_sign_matches_a_real_gradient_step() -> None:
    """Positive Grad-Dot means one small SGD step on z_i lowers the query's loss."""
    model = tiny_mlp(seed=4)
    X, y = tiny_data(n=12, seed=5)
    Xq, yq = tiny_data(n=1, seed=6)
    task = tda.Task(model)
    S = tda.GradDot(task).fit((X, y)).scores((Xq, yq))[0]
    base = CE(model(Xq), yq).item()
    lr = 1e-7
    G = loop_grads(model, X, y, CE)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    for i in range(len(X)):
        stepped = flat - lr * G[i]
        params = {}
        offset = 0
        for name, p in model.named_parameters():
            params[name] = stepped[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        new = CE(torch.func.functional_call(model, params, (Xq,)), yq).item()
        # first order: base - new ~= lr * S[i]
        assert (base - new) == pytest.approx(lr * S[i].item(), rel=1e-3, abs=1e-10)


def test_projected_grad_dot_approximates_exact() -> None:
    model = tiny_mlp(d_in=5, hidden=20)
    X, y = tiny_data(n=30)
    task = tda.Task(model)
    exact = tda.GradDot(task).fit((X, y)).scores((X[:5], y[:5]))
    proj = tda.GradDot(task, projection=tda.Projector(4096, kind="gaussian", seed=0))
    approx = proj.fit((X, y)).scores((X[:5], y[:5]))
    rel = (approx - exact).norm() / exact.norm()
    assert rel < 0.1
    again = tda.GradDot(task, projection=tda.Projector(4096, kind="gaussian", seed=0))
    assert torch.equal(again.fit((X, y)).scores((X[:5], y[:5])), approx)


def test_representation_similarity_is_cosine_of_penultimate(setup) -> None:
    model, (X, y), (Xq, yq) = setup
    task = tda.Task(model)
    h, hq = torch.tanh(model[0](X)), torch.tanh(model[0](Xq))
    S = tda.RepresentationSimilarity(task).fit((X, y)).scores((Xq, yq))
    ref = (hq @ h.T) / torch.outer(hq.norm(dim=1), h.norm(dim=1))
    assert torch.allclose(S, ref, rtol=1e-10)
    D = tda.RepresentationSimilarity(task, similarity="dot", layer="1").fit((X, y))
    pre, preq = model[0](X), model[0](Xq)
    assert torch.allclose(D.scores((Xq, yq)), preq @ pre.T, rtol=1e-10)


def test_random_baseline_is_seeded_and_block_size_independent(setup) -> None:
    _model, (X, y), (Xq, yq) = setup
    a = tda.RandomBaseline(seed=1, block_size=7).fit((X, y)).scores((Xq, yq))
    b = tda.RandomBaseline(seed=1, block_size=64).fit((X, y)).scores((Xq, yq))
    c = tda.RandomBaseline(seed=2).fit((X, y)).scores((Xq, yq))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert abs(float(a.mean())) < 0.5 and 0.6 < float(a.std()) < 1.4


def test_accepts_dataset_and_dataloader(setup) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    model, (X, y), (Xq, yq) = setup
    task = tda.Task(model)
    ref = tda.GradDot(task).fit((X, y)).scores((Xq, yq))
    ds = TensorDataset(X, y)
    via_ds = tda.GradDot(task).fit(ds).scores(TensorDataset(Xq, yq))
    via_dl = tda.GradDot(task).fit(DataLoader(ds, batch_size=8)).scores((Xq, yq))
    assert torch.allclose(ref, via_ds) and torch.allclose(ref, via_dl)
