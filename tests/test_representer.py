"""Representer points: exact decomposition of the refit outputs, closed forms, signs, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdakit as tda
from tdakit.errors import TdakitError
from test_trak import _one_thread  # noqa: F401  (autouse: tiny models run on one thread)

D = torch.float64


def _data(n=60, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=D)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    return X, y


def _trained(bias=True, seed=0, X=None, y=None, dtype=D):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3, bias=bias)).to(dtype)
    if X is None:
        X, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X.to(dtype)), y).backward()
        opt.step()
    return model.eval()


def _features(model, X, bias=True):
    h = model[1](model[0](X)).detach().to(D)
    return torch.cat([h, torch.ones(len(h), 1, dtype=D)], 1) if bias else h


@pytest.mark.parametrize(("bias", "newton"), [(True, "direct"), (False, "direct"), (True, "cg")])
def test_decomposition_reproduces_refit_outputs(bias, newton, monkeypatch):
    if newton == "cg":  # the Hessian-free Newton path used for large layers
        monkeypatch.setattr("tdakit.methods.representer.DIRECT_NEWTON_MAX", 0)
    X, y = _data()
    model = _trained(bias=bias)
    rp = tda.RepresenterPoints(tda.Task(model), l2=1e-3).fit((X, y))
    assert rp.converged_ and rp.refit_grad_norm_ < 1e-10
    Xq, yq = _data(n=7, seed=3)
    check = rp.decomposition_check((Xq, yq))
    assert check.max_abs_error < 1e-9 * float(check.refit_outputs.abs().max())
    torch.testing.assert_close(check.reconstructed, check.refit_outputs, rtol=1e-9, atol=1e-9)
    # the refit differs from the trained layer (it is a different, regularised fit) ...
    H = _features(model, Xq, bias)
    assert (check.refit_outputs - model(Xq)).abs().max() > 1e-3
    # ... and alpha has the closed form -(softmax(o_i) - e_{y_i}) / (2 lambda N)
    O = _features(model, X, bias) @ rp.weights_.T
    want = -(O.softmax(1) - nn.functional.one_hot(y, 3)) / (2e-3 * len(X))
    torch.testing.assert_close(rp.alpha_, want, rtol=1e-12, atol=1e-14)
    # scores toward the query's label sum to the refit logit of that label
    S = rp.scores((Xq, yq))
    torch.testing.assert_close(
        S.sum(1), (H @ rp.weights_.T)[torch.arange(7), yq], rtol=1e-9, atol=1e-9
    )
    torch.testing.assert_close(rp.self_scores(), torch.diagonal(rp.scores((X, y))))


def test_mse_refit_matches_ridge_closed_form_and_residual_weights():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(D)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(40, 4, dtype=D, generator=g), torch.randn(40, 2, dtype=D, generator=g)
    lam = 0.01
    rp = tda.RepresenterPoints(tda.Task(model, loss="mse"), l2=lam).fit((X, Y))
    Ht = torch.cat([model[1](model[0](X)).detach(), torch.ones(40, 1, dtype=D)], 1)
    # minimiser of (1/N) sum 0.5 |W h - y|^2 + lam |W|^2
    W = torch.linalg.solve(Ht.T @ Ht / 40 + 2 * lam * torch.eye(7, dtype=D), Ht.T @ Y / 40).T
    torch.testing.assert_close(rp.weights_, W, rtol=1e-10, atol=1e-12)
    Xq, Yq = X[:5], Y[:5]
    Hq = Ht[:5]
    resid = Yq - Hq @ W.T  # w_q = -d(0.5 |o - y|^2)/do
    want = (resid @ rp.alpha_.T) * (Hq @ Ht.T)
    torch.testing.assert_close(rp.scores((Xq, Yq)), want, rtol=1e-9, atol=1e-12)


def test_logit_and_custom_measurements():
    X, y = _data()
    model = _trained()
    rp = tda.RepresenterPoints(tda.Task(model, measurement=2), l2=1e-2).fit((X, y))
    H = _features(model, X)
    kern = H[:4] @ H.T
    torch.testing.assert_close(rp.scores((X[:4], y[:4])), rp.alpha_[:, 2][None, :] * kern)

    def neg_logit_sum(o, t):
        return -(o[:, 0] + 2 * o[:, 1])

    rp = tda.RepresenterPoints(tda.Task(model, measurement=neg_logit_sum), l2=1e-2).fit((X, y))
    want = (rp.alpha_[:, 0] + 2 * rp.alpha_[:, 1])[None, :] * kern
    torch.testing.assert_close(rp.scores((X[:4], y[:4])), want)


def test_duplicated_mislabelled_example_signs():
    """A mislabelled example (duplicated) helps queries with its flipped label and opposes
    queries with the true label. Representer scores are dominated by large-|alpha| examples
    of the query's class, so the copies rank in the top 10 of 63, not necessarily first."""
    X, y = _data(n=60, seed=2)
    true = y[:3].clone()
    y = y.clone()
    y[:3] = (y[:3] + 1) % 3
    Xd, yd = torch.cat([X, X[:3]]), torch.cat([y, y[:3]])
    model = _trained(X=Xd, y=yd, seed=2)
    rp = tda.RepresenterPoints(tda.Task(model), l2=1e-3).fit((Xd, yd))
    q = torch.arange(3)
    for labels, sign in ((y[:3], 1), (true, -1)):
        S = rp.scores((X[:3], labels))
        torch.testing.assert_close(S[q, q], S[q, 60 + q])  # both copies count the same
        assert bool((sign * S[q, q] > 0).all())
        top = (sign * S).argsort(1, descending=True)[:, :10]
        assert all(int(i) in top[int(i)] and 60 + int(i) in top[int(i)] for i in q)


def test_float32_model_and_non_convergence_warning():
    X, y = _data()
    model = _trained(dtype=torch.float32)
    rp = tda.RepresenterPoints(tda.Task(model), l2=1e-3).fit((X.float(), y))
    S = rp.scores((X[:3].float(), y[:3]))
    assert S.dtype == torch.float32
    assert rp.top_k((X[:3].float(), y[:3]), k=2)[1].dtype == torch.float32
    assert rp.self_scores().dtype == torch.float32
    check = rp.decomposition_check((X[:3].float(), y[:3]))
    assert check.max_abs_error < 1e-9
    with pytest.warns(RuntimeWarning, match="did not converge"):
        rp = tda.RepresenterPoints(tda.Task(model), l2=1e-3, tolerance=1e-300).fit((X.float(), y))
    assert not rp.converged_


def test_clear_errors():
    model = _trained()
    X, y = _data()
    task = tda.Task(model)
    for bad in (0, -1e-3, float("nan"), float("inf"), True):
        with pytest.raises(TdakitError, match="l2"):
            tda.RepresenterPoints(task, l2=bad)
    with pytest.raises(TdakitError, match="nn.Linear"):
        tda.RepresenterPoints(task, layer="1")
    with pytest.raises(TdakitError, match="transformed further"):
        tda.RepresenterPoints(task, layer="0").fit((X, y))
    with pytest.raises(TdakitError, match="not fitted"):
        tda.RepresenterPoints(task).scores((X, y))
    with pytest.raises(TdakitError, match="not fitted"):
        tda.RepresenterPoints(task).decomposition_check((X, y))
