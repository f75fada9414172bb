"""InfluenceFunction: brute-force and closed-form references, solver agreement, damping, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tdakit as tda
from conftest import tiny_data, tiny_mlp
from tdakit.curvature.operators import CurvatureOperator
from test_curvature import ref_ggn, ref_hessian
from test_grads import loop_grads

IF = tda.InfluenceFunction


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def brute_influence(C: torch.Tensor, lam: float, Gq: torch.Tensor, G: torch.Tensor):
    A = C + lam * torch.eye(len(C), dtype=C.dtype)
    return Gq @ torch.linalg.solve(A, G.T) / len(G)


@pytest.fixture(scope="module")
def setup():
    model = tiny_mlp()
    X, y = tiny_data(n=40)
    Xq, yq = tiny_data(n=4, seed=9)
    G = loop_grads(model, X, y, F.cross_entropy)
    Gq = loop_grads(model, Xq, yq, F.cross_entropy)
    return model, tda.Task(model), (X, y), (Xq, yq), G, Gq


@pytest.fixture(scope="module")
def small():
    """P = 31 so that full-rank Arnoldi and many CG/LiSSA passes stay fast."""
    model = tiny_mlp(d_in=3, hidden=4)
    X, y = tiny_data(n=40, d_in=3)
    Xq, yq = tiny_data(n=4, d_in=3, seed=9)
    return model, tda.Task(model), (X, y), (Xq, yq)


@pytest.mark.parametrize("curvature", ["hessian", "ggn", "fisher"])
def test_exact_influence_equals_brute_force(setup, curvature: str) -> None:
    model, task, train, queries, G, Gq = setup
    C = {
        "hessian": lambda: ref_hessian(model, *train),
        "ggn": lambda: ref_ggn(model, *train),
        "fisher": lambda: G.T @ G / len(G),
    }[curvature]()
    lam = 0.05 + max(0.0, -float(torch.linalg.eigvalsh(C)[0]))
    S = IF(task, damping=lam, curvature=curvature, block_size=7).fit(train).scores(queries)
    assert S.shape == (4, 40)
    assert torch.allclose(S, brute_influence(C, lam, Gq, G), rtol=1e-9, atol=1e-12)


def test_positive_means_helpful_duplicates_and_self_influence(setup) -> None:
    _, task, (X, y), _, _, _ = setup
    Xd, yd = torch.cat([X, X[:1]]), torch.cat([y, y[:1]])  # example 0 twice
    m = IF(task, curvature="ggn", damping=0.01).fit((Xd, yd))
    S = m.scores((X[:1], y[:1]))[0]
    assert S[0] > 0 and torch.isclose(S[0], S[-1], rtol=1e-10)
    assert int(S.argmax()) in (0, len(S) - 1)  # a duplicate is the top proponent
    selfs = m.self_scores()
    assert bool((selfs > 0).all())  # g^T (G + λI)^{-1} g > 0
    assert torch.allclose(selfs, torch.diagonal(m.scores((Xd, yd))), rtol=1e-10)


def test_ridge_closed_forms_newton_step_and_exact_leave_one_out() -> None:
    gen = torch.Generator().manual_seed(0)
    N, d, lam = 30, 4, 0.1
    X = torch.randn(N, d, generator=gen, dtype=torch.float64)
    y = X @ torch.randn(d, 1, generator=gen, dtype=torch.float64) + 0.5 * torch.randn(
        N, 1, generator=gen, dtype=torch.float64
    )
    Xq = torch.randn(5, d, generator=gen, dtype=torch.float64)
    yq = torch.randn(5, 1, generator=gen, dtype=torch.float64)
    # Objective (1/N) sum_i 0.5 (x_i.w - y_i)^2 + (lam/2)|w|^2: the L2 term is the damping.
    H = X.T @ X / N + lam * torch.eye(d, dtype=torch.float64)
    w = torch.linalg.solve(H, X.T @ y / N)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w.T)
    g = (X @ w - y) * X  # per-example data-loss gradients [N, d]

    # Measurement = logit 0: the query objective -x_q.w is linear in w.
    S = IF(tda.Task(model, loss="mse", measurement=0), damping=lam).fit((X, y)).scores((Xq, yq))
    step = torch.linalg.solve(H, g.T / N)  # Newton step on the LOO objective, full-data H
    assert torch.allclose(S, -(Xq @ step), rtol=1e-10, atol=1e-14)

    loo_w = []
    for i in range(N):
        keep = torch.arange(N) != i
        Hi = X[keep].T @ X[keep] / N + lam * torch.eye(d, dtype=torch.float64)
        loo_w.append(torch.linalg.solve(Hi, X[keep].T @ y[keep] / N))
    dW = torch.cat(loo_w, dim=1) - w  # exact retraining [d, N]
    lev = torch.einsum("nd,de,ne->n", X, torch.linalg.inv(H), X) / N
    loo = -(Xq @ dW)
    # Documented relation: exact LOO = influence / (1 - leverage): close, not equal.
    assert torch.allclose(loo, S / (1 - lev), rtol=1e-9, atol=1e-14)
    assert float(lev.min()) > 0 and float(lev.max()) < 1
    assert not torch.allclose(loo, S, rtol=1e-3)
    assert rel_err(S, loo) < float(lev.max())

    # Loss measurement: exact change = influence/(1 - h) + 0.5 (x_q . dW)^2.
    S_loss = IF(tda.Task(model, loss="mse"), damping=lam).fit((X, y)).scores((Xq, yq))
    dq = Xq @ dW
    loss_loo = 0.5 * ((Xq @ w + dq - yq) ** 2 - (Xq @ w - yq) ** 2)
    assert torch.allclose(loss_loo, S_loss / (1 - lev) + 0.5 * dq**2, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("curvature", ["hessian", "ggn", "fisher"])
def test_cg_and_full_rank_arnoldi_match_exact(small, curvature: str) -> None:
    _, task, train, queries = small
    C = CurvatureOperator(task, *train, curvature).matrix()
    lam = 0.01 + max(0.0, -float(torch.linalg.eigvalsh(C)[0]))
    ref = IF(task, curvature=curvature, damping=lam).fit(train).scores(queries)
    cg = IF(task, solver="cg", curvature=curvature, damping=lam, tol=1e-12, solve_block=3)
    assert rel_err(cg.fit(train).scores(queries), ref) < 1e-4
    ar = IF(task, solver="arnoldi", curvature=curvature, damping=lam, rank=task.num_params)
    assert rel_err(ar.fit(train).scores(queries), ref) < 1e-4


def test_lissa_matches_exact_and_minibatch_lissa_is_seeded(small) -> None:
    _, task, train, queries = small
    lam = 0.5  # comparable to the top GGN eigenvalue: LiSSA converges in ~70 steps
    ref = IF(task, curvature="ggn", damping=lam).fit(train).scores(queries)
    li = IF(task, solver="lissa", curvature="ggn", damping=lam, tol=1e-9, depth=1000)
    assert rel_err(li.fit(train).scores(queries), ref) < 1e-4
    kw = dict(curvature="ggn", damping=lam, depth=25, repeats=2, lissa_batch_size=20, scale=2.0)
    a = IF(task, solver="lissa", seed=1, **kw).fit(train).scores(queries)
    b = IF(task, solver="lissa", seed=1, **kw).fit(train).scores(queries)
    c = IF(task, solver="lissa", seed=2, **kw).fit(train).scores(queries)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert rel_err(a, ref) < 0.2  # stochastic minibatch curvature: close, not exact


@pytest.mark.parametrize("curvature", ["ggn", "fisher"])
def test_projected_exact_with_an_orthogonal_basis_equals_exact(small, curvature: str) -> None:
    _, task, train, queries = small
    P = task.num_params
    Q, _ = torch.linalg.qr(
        torch.randn(P, P, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    ref = IF(task, curvature=curvature, damping=0.01).fit(train).scores(queries)
    m = IF(task, solver="projected", projection=Q, curvature=curvature, damping=0.01)
    assert rel_err(m.fit(train).scores(queries), ref) < 1e-8


def test_projected_fisher_with_a_random_projection_is_the_k_dim_formula(setup) -> None:
    model, task, train, queries, G, Gq = setup
    k, lam = 20, 0.01
    proj = tda.Projector(k, kind="rademacher", seed=3)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    eye = torch.eye(task.num_params, dtype=torch.float64)
    blocks = dict(zip(names, torch.split(eye, [s.numel() for s in shapes], dim=1), strict=True))
    R = proj.project(
        {n: b.reshape(len(eye), *s) for (n, b), s in zip(blocks.items(), shapes, strict=True)}
    )
    Phi, Phq = G @ R, Gq @ R
    ref = brute_influence(Phi.T @ Phi / len(Phi), lam, Phq, Phi)
    S = IF(task, solver="projected", projection=k, seed=3, damping=lam).fit(train).scores(queries)
    assert torch.allclose(S, ref, rtol=1e-9, atol=1e-12)


def test_datainf_equals_its_formula_evaluated_by_brute_force(setup) -> None:
    _, task, train, queries, G, Gq = setup
    layers = [slice(0, 42), slice(42, 66)]  # net.0 (5x7 + 7) and net.2 (7x3 + 3)
    for mode, c in [("absolute", 0.05), ("relative", 0.1)]:
        m = IF(task, solver="datainf", damping=c, damping_mode=mode).fit(train)
        S = m.scores(queries)
        lams = [c if mode == "absolute" else c * float(G[:, s].pow(2).mean()) for s in layers]
        assert list(m.damping_.values()) == pytest.approx(lams, rel=1e-12)
        N = len(G)
        ref = torch.zeros(len(Gq), N, dtype=torch.float64)
        for q in range(len(Gq)):
            for i in range(N):
                total = 0.0
                for s, lam in zip(layers, lams, strict=True):
                    gq, gi = Gq[q, s], G[i, s]
                    corr = sum(
                        float(gq @ G[j, s]) * float(G[j, s] @ gi) / (lam + float(G[j, s] @ G[j, s]))
                        for j in range(N)
                    )
                    total += (float(gq @ gi) - corr / N) / lam
                ref[q, i] = total / N  # InfluenceFunction's 1/N
        assert torch.allclose(S, ref, rtol=1e-9, atol=1e-13)


def test_relative_damping_is_c_times_the_mean_diagonal(setup) -> None:
    model, task, train, _, G, _ = setup
    c = 0.1
    m = IF(task, curvature="ggn", damping=c, damping_mode="relative").fit(train)
    assert m.damping_ == pytest.approx(
        c * float(ref_ggn(model, *train).diagonal().mean()), rel=1e-10
    )
    m = IF(task, solver="cg", damping=c, damping_mode="relative", diag_estimate="grad_sq")
    assert m.fit(train).damping_ == pytest.approx(c * float(G.pow(2).mean()), rel=1e-10)
    m = IF(task, solver="cg", curvature="ggn", damping=c, damping_mode="relative", seed=4)
    m.fit(train)
    hutch = CurvatureOperator(task, *train, "ggn").hutchinson_mean_diagonal(32, seed=4)
    assert m.mean_diagonal_ == pytest.approx(hutch, rel=1e-12)
    assert m.damping_ == pytest.approx(c * hutch, rel=1e-12)


def test_kfac_dispatch_applies_the_kfac_inverse(setup) -> None:
    from tdakit.curvature.kfac import KFAC

    _, task, train, queries, G, Gq = setup
    m = IF(task, solver="ekfac", damping=0.01).fit(train)
    kfac = KFAC(task, damping=0.01, eigen_correction=True).fit(*train)
    ref = kfac.apply(Gq) @ G.T / len(G)
    assert torch.allclose(m.scores(queries), ref, rtol=1e-9, atol=1e-13)


def singular_regression():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    X = torch.cat([x, x], dim=1)  # duplicated features: X^T X is singular
    y = torch.randn(30, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    return tda.Task(model, loss="mse"), (X, y), (X[:3], y[:3])


@pytest.mark.parametrize("solver", ["exact", "projected", "cg", "lissa", "arnoldi", "datainf"])
@pytest.mark.parametrize("case", ["singular", "indefinite"])
def test_badly_conditioned_problems_raise_or_stay_finite(small, solver: str, case: str) -> None:
    if case == "singular":
        task, train, queries = singular_regression()
        curvature, lam = None, 0.0
    else:
        _, task, train, queries = small
        curvature, lam = ("hessian" if solver not in ("projected", "datainf") else None), 1e-9
    kw = {"projection": 8} if solver == "projected" else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is reported
            m = IF(
                task, solver=solver, curvature=curvature, damping=lam, max_iter=50, depth=100, **kw
            )
            S = m.fit(train).scores(queries)
    except tda.TdakitError as err:
        assert "damping" in str(err)
        return
    assert torch.isfinite(S).all()


def test_exact_solver_error_names_the_fixes(small) -> None:
    _, task, train, _ = small
    with pytest.raises(tda.TdakitError, match=r"smallest eigenvalue.*curvature='ggn'"):
        IF(task, curvature="hessian", damping=1e-9).fit(train)


def test_bad_inputs_raise_clear_errors(small) -> None:
    _, task, train, queries = small
    cases = [
        (dict(solver="newton"), "Unknown solver"),
        (dict(damping=-1.0), ">= 0"),
        (dict(damping=float("nan")), ">= 0"),
        (dict(damping_mode="percent"), "damping_mode"),
        (dict(solver="projected"), "needs projection"),
        (dict(solver="cg", projection=8), "only used by solver='projected'"),
        (dict(solver="datainf", curvature="hessian"), "works with curvature"),
        (dict(curvature="laplace"), "works with curvature"),
        (dict(diag_estimate="magic"), "diag_estimate"),
        (dict(solver="projected", projection=0), "positive int"),
    ]
    for kw, msg in cases:
        with pytest.raises(tda.TdakitError, match=msg):
            IF(task, **kw)
    with pytest.raises(tda.TdakitError, match="not fitted"):
        IF(task).scores(queries)
    with pytest.raises(tda.TdakitError, match="solver='cg'"):
        IF(task, max_explicit_params=10).fit(train)
    with pytest.raises(tda.TdakitError, match="damping > 0"):
        IF(task, solver="datainf", damping=0.0).fit(train)
