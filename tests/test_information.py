"""Information-theoretic attribution against refitted Gaussian posteriors (float64)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import tdakit as tda
from tdakit.errors import ConfigError

D, N, SIGMA2, DELTA = 4, 40, 0.3, 0.7


def regression(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = X @ torch.randn(D, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        N, generator=g, dtype=torch.float64
    )
    model = nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, D, generator=g, dtype=torch.float64))
    return model, X, y.unsqueeze(1)


def il_method(model, loss="mse", **kw):
    kw = {"projection": None, "prior_precision": DELTA, "signed": False, **kw}
    if loss == "mse":
        kw.setdefault("noise", SIGMA2)
    return tda.InformationLoss(tda.Task(model, loss=loss), **kw)


def test_blr_subset_information_equals_refit_entropy_difference():
    model, X, y = regression()
    Xq = torch.randn(3, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    yq = torch.zeros(3, 1, dtype=torch.float64)
    for observed in (False, True):
        m = il_method(model, observed=observed).fit((X, y))
        A = DELTA * torch.eye(D, dtype=torch.float64) + X.T @ X / SIGMA2
        noise = SIGMA2 if observed else 0.0

        def var(Ainv: torch.Tensor, noise: float = noise) -> torch.Tensor:
            return ((Xq @ Ainv) * Xq).sum(1) + noise

        g = torch.Generator().manual_seed(1)
        for size in (1, 3, 7):
            S = torch.randperm(N, generator=g)[:size]
            A_S = A - X[S].T @ X[S] / SIGMA2
            ref = 0.5 * (
                torch.log(var(torch.linalg.inv(A_S))) - torch.log(var(torch.linalg.inv(A)))
            )
            got = m.subset_information((Xq, yq), S)
            torch.testing.assert_close(got, ref, rtol=1e-8, atol=0)
            # information gain: S alone added to the prior
            prior = DELTA * torch.eye(D, dtype=torch.float64)
            ref_gain = 0.5 * (
                torch.log(var(torch.linalg.inv(prior)))
                - torch.log(var(torch.linalg.inv(prior + X[S].T @ X[S] / SIGMA2)))
            )
            torch.testing.assert_close(
                m.subset_information((Xq, yq), S, objective="gain"), ref_gain, rtol=1e-8, atol=0
            )
    # the single-example closed form 1/2 log(1 + c^2 / (v (sigma^2 - s)))
    m = il_method(model).fit((X, y))
    Ainv = torch.linalg.inv(A)
    c, s, v = Xq @ Ainv @ X.T, ((X @ Ainv) * X).sum(1), ((Xq @ Ainv) * Xq).sum(1)
    closed = 0.5 * torch.log1p(c**2 / (v[:, None] * (SIGMA2 - s[None, :])))
    torch.testing.assert_close(m.scores((Xq, yq)), closed, rtol=1e-8, atol=1e-14)


def softmax_setup(C: int = 3):
    g = torch.Generator().manual_seed(2)
    X = torch.randn(25, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (25,), generator=g)
    model = nn.Linear(D, C).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model, X, y


def jacobians(model: nn.Linear, X: torch.Tensor) -> torch.Tensor:
    """``J_i = d f / d (W, b)`` ``[n, C, C*D + C]`` in the parameter order of the model."""
    C = model.out_features
    eye = torch.eye(C, dtype=X.dtype)
    JW = eye[None, :, :, None] * X[:, None, None, :]  # [n, C, C, D]
    Jb = eye.expand(len(X), C, C)
    return torch.cat([JW.reshape(len(X), C, -1), Jb], dim=2)


def test_softmax_downdates_equal_refits():
    model, X, y = softmax_setup()
    m = il_method(model, loss="cross_entropy").fit((X, y))
    with torch.no_grad():
        p = model(X).softmax(1)
    Lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    J = jacobians(model, X)
    A = DELTA * torch.eye(J.shape[2], dtype=torch.float64) + torch.einsum(
        "nci,ncd,ndj->ij", J, Lam, J
    )
    Xq, yq = X[:2] + 0.1, y[:2]
    Jq = jacobians(model, Xq)

    def logdet_cov(Ainv: torch.Tensor) -> torch.Tensor:
        return torch.linalg.slogdet(Jq @ Ainv @ Jq.transpose(1, 2)).logabsdet

    for S in (torch.tensor([3]), torch.tensor([0, 4, 9, 11])):
        A_S = A - torch.einsum("nci,ncd,ndj->ij", J[S], Lam[S], J[S])
        ref = 0.5 * (logdet_cov(torch.linalg.inv(A_S)) - logdet_cov(torch.linalg.inv(A)))
        torch.testing.assert_close(m.subset_information((Xq, yq), S), ref, rtol=1e-8, atol=0)
    single = m.scores((Xq, yq))
    for i in (0, 7):
        A_i = A - torch.einsum("ci,cd,dj->ij", J[i], Lam[i], J[i])
        ref = 0.5 * (logdet_cov(torch.linalg.inv(A_i)) - logdet_cov(torch.linalg.inv(A)))
        torch.testing.assert_close(single[:, i], ref, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("objective", ["loss", "gain"])
def test_incremental_greedy_equals_brute_force_greedy(objective):
    model, X, y = softmax_setup()
    m = il_method(model, loss="cross_entropy").fit((X, y))
    Xq, yq = X[5:7] - 0.2, y[5:7]
    selections = m.select_subset((Xq, yq), 4, objective=objective)
    for q, sel in enumerate(selections):
        chosen: list[int] = []
        total = 0.0
        for step in range(4):
            best, best_val = None, -float("inf")
            for j in range(len(X)):
                if j in chosen:
                    continue
                val = float(
                    m.subset_information(
                        (Xq[q : q + 1], yq[q : q + 1]),
                        torch.tensor([*chosen, j]),
                        objective=objective,
                    )
                )
                if val > best_val:
                    best, best_val = j, val
            assert sel.indices[step] == best
            torch.testing.assert_close(
                sel.gains[step].item(), best_val - total, rtol=1e-8, atol=1e-12
            )
            chosen.append(best)
            total = best_val
        assert sel.total == pytest.approx(total, rel=1e-8)


def test_information_gain_formula_equals_direct_computation():
    model, X, y = softmax_setup()
    task = tda.Task(model)
    ig = tda.InformationGain(task, projection=None, prior_precision=DELTA).fit((X, y))
    G = tda.GradDot(task).fit((X, y))
    T = G.features_.T
    gq = (
        tda.GradDot(task)
        .fit((X, y))
        .query_features(list(tda.data.sources.as_source((X[:3], y[:3])).batches(task, 8)))
    )
    prior = DELTA * torch.eye(T.shape[1], dtype=torch.float64)
    direct = torch.empty(3, len(X), dtype=torch.float64)
    for q, i in itertools.product(range(3), range(len(X))):
        v0 = gq[q] @ torch.linalg.solve(prior, gq[q])
        post = prior + torch.outer(T[i], T[i])
        vi = gq[q] @ torch.linalg.solve(post, gq[q])
        direct[q, i] = 0.5 * torch.log(v0 / vi) * torch.sign(gq[q] @ T[i])
    torch.testing.assert_close(ig.scores((X[:3], y[:3])), direct, rtol=1e-7, atol=1e-12)


def test_information_loss_ignores_labels_but_influence_does_not():
    model, X, y = softmax_setup()
    y2 = (y + 1) % 3
    Xq, yq = X[:4] + 0.05, y[:4]
    il = [il_method(model, loss="cross_entropy").fit((X, t)).scores((Xq, yq)) for t in (y, y2)]
    torch.testing.assert_close(il[0], il[1], rtol=1e-10, atol=1e-14)
    task = tda.Task(model)
    inf = [
        tda.InfluenceFunction(task, solver="exact", curvature="ggn", damping=0.1)
        .fit((X, t))
        .scores((Xq, yq))
        for t in (y, y2)
    ]
    assert (inf[0] - inf[1]).abs().max() > 1e-3


def test_planted_near_duplicates():
    """Five near-copies of one direction aligned with the query: single-example influence
    ranks all of them first; greedy information gain takes fewer (once one copy is in, the
    others add little). Information loss is measured, not asserted (docs/methods.md)."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, D, generator=g, dtype=torch.float64)
    dups = base + 1e-3 * torch.randn(5, D, generator=g, dtype=torch.float64)
    X = torch.cat([dups, torch.randn(30, D, generator=g, dtype=torch.float64)])
    y = X @ torch.ones(D, 1, dtype=torch.float64)
    y[:5] += 5.0  # the planted copies are also badly fitted: large, aligned gradients
    model = nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.5)
    Xq, yq = base + 0.3 * torch.randn(1, D, generator=g, dtype=torch.float64), y[:1]
    m = il_method(model).fit((X, y))
    task = tda.Task(model, loss="mse")
    infl = tda.InfluenceFunction(task, solver="exact", damping=0.1).fit((X, y)).scores((Xq, yq))
    top_infl = infl.abs().topk(5).indices[0]
    gain = m.select_subset((Xq, yq), 5, objective="gain")[0]
    loss = m.select_subset((Xq, yq), 5, objective="loss")[0]
    n_dups = {
        name: int((sel < 5).sum())
        for name, sel in (("influence", top_infl), ("gain", gain.indices), ("loss", loss.indices))
    }
    assert n_dups["influence"] == 5
    assert n_dups["gain"] < n_dups["influence"], n_dups
    print(f"duplicates among the 5 picks: {n_dups}")  # measured; reported in docs


def test_bad_options():
    model, X, y = softmax_setup()
    with pytest.raises(ConfigError, match="features"):
        tda.InformationLoss(tda.Task(model), features="jacobian")
    with pytest.raises(ConfigError, match="observed"):
        tda.InformationLoss(tda.Task(model), observed=True)
    with pytest.raises(ConfigError, match="prior_precision"):
        tda.InformationLoss(tda.Task(model), prior_precision=-1.0)
    m = il_method(model, loss="cross_entropy").fit((X, y))
    with pytest.raises(ConfigError, match="objective"):
        m.select_subset((X[:1], y[:1]), 2, objective="entropy")
