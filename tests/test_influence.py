"""InfluenceFunction: brute-force and closed-form references, solver agreement, damping, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tdakit as tda
from conftest import tiny_data, tiny_mlp
from tdakit.data.sources import as_source
from tdakit.errors import ConfigError, NotFittedError
from tdakit.preconditioners import (
    CG,
    EKFAC,
    Arnoldi,
    Curvature,
    CurvatureOperator,
    DataInf,
    Exact,
    LiSSA,
    MatrixProjector,
    Projected,
    Relative,
)
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
    C = CurvatureOperator(task, as_source(train), curvature).matrix()
    lam = 0.01 + max(0.0, -float(torch.linalg.eigvalsh(C)[0]))
    ref = IF(task, curvature=curvature, damping=lam).fit(train).scores(queries)
    cg = IF(task, solver=CG(tol=1e-12, block=3), curvature=curvature, damping=lam)
    assert rel_err(cg.fit(train).scores(queries), ref) < 1e-4
    ar = IF(task, solver=Arnoldi(rank=task.num_params), curvature=curvature, damping=lam)
    assert rel_err(ar.fit(train).scores(queries), ref) < 1e-4


def test_lissa_matches_exact_and_minibatch_lissa_is_seeded(small) -> None:
    _, task, train, queries = small
    lam = 0.5  # comparable to the top GGN eigenvalue: LiSSA converges in ~70 steps
    ref = IF(task, curvature="ggn", damping=lam).fit(train).scores(queries)
    li = IF(task, solver=LiSSA(tol=1e-9, depth=1000), curvature="ggn", damping=lam)
    assert rel_err(li.fit(train).scores(queries), ref) < 1e-4
    kw = dict(depth=25, repeats=2, batch_size=20, scale=2.0)

    def minibatch(seed: int) -> torch.Tensor:
        m = IF(task, solver=LiSSA(seed=seed, **kw), curvature="ggn", damping=lam)
        return m.fit(train).scores(queries)

    a, b, c = minibatch(1), minibatch(1), minibatch(2)
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
    solver = Projected(projector=MatrixProjector(Q))
    m = IF(task, solver=solver, curvature=curvature, damping=0.01)
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
    m = IF(task, solver=Projected(dim=k, seed=3), damping=lam)
    assert m.curvature == "fisher"  # the projected solver's default
    assert torch.allclose(m.fit(train).scores(queries), ref, rtol=1e-9, atol=1e-12)


def test_datainf_equals_its_formula_evaluated_by_brute_force(setup) -> None:
    _, task, train, queries, G, Gq = setup
    layers = [slice(0, 42), slice(42, 66)]  # net.0 (5x7 + 7) and net.2 (7x3 + 3)
    for damping, c in [(0.05, 0.05), (Relative(0.1), 0.1)]:
        m = IF(task, solver="datainf", damping=damping).fit(train)
        S = m.scores(queries)
        relative = isinstance(damping, Relative)
        lams = [c * float(G[:, s].pow(2).mean()) if relative else c for s in layers]
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
    mean = float(ref_ggn(model, *train).diagonal().mean())
    for damping in (Relative(c), {"relative": c}):
        m = IF(task, curvature="ggn", damping=damping).fit(train)
        assert m.damping == Relative(c)
        assert m.damping_ == pytest.approx(c * mean, rel=1e-10)
        assert m.mean_diagonal_ == pytest.approx(mean, rel=1e-10)
    m = IF(task, solver="cg", damping=Relative(c, estimate="grad_sq"))
    assert m.fit(train).damping_ == pytest.approx(c * float(G.pow(2).mean()), rel=1e-10)
    m = IF(task, solver="cg", curvature="ggn", damping=Relative(c, seed=4))
    m.fit(train)
    hutch = CurvatureOperator(task, as_source(train), "ggn").hutchinson_mean_diagonal(32, seed=4)
    assert m.mean_diagonal_ == pytest.approx(hutch, rel=1e-12)
    assert m.damping_ == pytest.approx(c * hutch, rel=1e-12)
    assert m.preconditioner_.damping_ == m.damping_


def test_kfac_dispatch_applies_the_kfac_inverse(setup) -> None:
    _, task, train, queries, G, Gq = setup
    m = IF(task, solver="ekfac", damping=0.01).fit(train)
    assert m.curvature == "ggn" and m.solver.layers_ == []  # fitted on a copy
    ekfac = EKFAC().fit(Curvature(task, as_source(train), "ggn", 0.01))
    ref = ekfac.apply(Gq) @ G.T / len(G)
    assert torch.allclose(m.scores(queries), ref, rtol=1e-9, atol=1e-13)


def test_kfac_on_an_embedding_model_equals_exact_ggn_influence() -> None:
    """Emb -> Linear with MSE: the embedding's GGN block is a Kronecker product, which K-FAC
    and EK-FAC represent exactly (test_kfac.py); end to end, gradient features included."""
    torch.manual_seed(10)
    model = nn.Sequential(nn.Embedding(5, 2), nn.Linear(2, 3)).double()
    ids = torch.tensor([0, 1, 2, 3, 4, 0, 0, 2, 4, 4, 1, 3])
    Y = torch.randn(len(ids), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    task = tda.Task(model, loss="mse", params=["0"])
    S = {
        s: IF(task, solver=s, curvature="ggn", damping=0.05).fit((ids, Y)).scores((ids, Y))
        for s in ("exact", "kfac", "ekfac")
    }
    assert float(S["exact"].abs().max()) > 1e-2
    for s in ("kfac", "ekfac"):
        assert torch.allclose(S[s], S["exact"], rtol=1e-9, atol=1e-12)


def test_solver_options_round_trip_through_the_config(small) -> None:
    _, task, train, queries = small
    m = IF(task, solver=CG(tol=1e-10, max_iter=70), damping=Relative(0.2, estimate="grad_sq"))
    config = m.to_config()
    assert config["solver"] == {"name": "cg", "tol": 1e-10, "max_iter": 70, "block": 128}
    assert config["damping"] == Relative(0.2, estimate="grad_sq").to_config()
    for rebuilt in (m.clone(), tda.from_config(config, task)):
        assert rebuilt.solver.to_config() == m.solver.to_config()
        assert rebuilt.damping == m.damping and rebuilt.curvature == "ggn"
    S = m.fit(train).scores(queries)
    assert torch.equal(m.clone().fit(train).scores(queries), S)


def singular_regression():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    X = torch.cat([x, x], dim=1)  # duplicated features: X^T X is singular
    y = torch.randn(30, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    return tda.Task(model, loss="mse"), (X, y), (X[:3], y[:3])


SOLVERS = {
    "exact": Exact,
    "projected": lambda: Projected(dim=8),
    "cg": lambda: CG(max_iter=50),
    "lissa": lambda: LiSSA(depth=100),
    "arnoldi": Arnoldi,
    "kfac": tda.solvers.KFAC,
    "ekfac": tda.solvers.EKFAC,
    "datainf": DataInf,
}


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("case", ["singular", "indefinite"])
def test_badly_conditioned_problems_raise_or_stay_finite(small, solver: str, case: str) -> None:
    if case == "singular":
        task, train, queries = singular_regression()
        curvature, lam = None, 0.0
    else:
        _, task, train, queries = small
        hessian_ok = "hessian" in SOLVERS[solver]().curvatures
        curvature, lam = ("hessian" if hessian_ok else None), 1e-9
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is reported
            m = IF(task, solver=SOLVERS[solver](), curvature=curvature, damping=lam)
            S = m.fit(train).scores(queries)
    except tda.TdakitError as err:
        assert "damping" in str(err)
        return
    assert torch.isfinite(S).all()
    if case == "singular":  # gradients lie in the curvature's range: pinv is the answer
        (X, y), (Xq, yq) = train, queries
        w = task.model.weight.detach().T
        G, Gq = (X @ w - y) * X, (Xq @ w - yq) * Xq
        ref = Gq @ torch.linalg.pinv(X.T @ X / len(X)) @ G.T / len(X)
        assert rel_err(S, ref) < 1e-5  # not amplified rounding noise from null directions


def test_exact_solver_error_names_the_fixes(small) -> None:
    _, task, train, _ = small
    with pytest.raises(tda.NumericalError, match=r"smallest eigenvalue.*curvature='ggn'"):
        IF(task, curvature="hessian", damping=1e-9).fit(train)


def test_bad_inputs_raise_clear_errors(small) -> None:
    _, task, train, queries = small
    cases = [
        (dict(solver="newton"), "Unknown solver 'newton'"),
        (dict(solver={"name": "cg", "rank": 10}), r"Bad options for solver 'cg'.*'rank'"),
        (dict(damping=-1.0), ">= 0"),
        (dict(damping=float("nan")), ">= 0"),
        (dict(damping="relative"), "must be a number"),
        (dict(damping={"relative": 0.1, "mode": "x"}), r"relative damping option.*'mode'"),
        (dict(solver="cg", projection=8), r"takes no projection=.*Projected\(dim=k\)"),
        (dict(solver="datainf", curvature="hessian"), "works with curvature"),
        (dict(solver="kfac", curvature="fisher"), "works with curvature"),
        (dict(curvature="laplace"), "works with curvature"),
        (dict(damping={"relative": 0.1, "estimate": "magic"}), "Unknown estimate 'magic'"),
        (dict(solver={"name": "projected", "dim": 0}), "dim must be an integer > 0"),
        # the former flat options are refused, naming the solver object that holds them
        (dict(solver="cg", tol=1e-12), r"tol= -> tda.solvers.CG\(tol="),
        (dict(solver="cg", max_iter=5, solve_block=3), r"max_iter=.*block="),
        (dict(solver="arnoldi", rank=10), r"Arnoldi\(rank="),
        (dict(solver="lissa", depth=10, lissa_batch_size=5), r"LiSSA\(depth=.*batch_size="),
        (dict(solver="lissa", seed=1), r"LiSSA\(seed="),
        (dict(damping_mode="relative"), r"Relative\(c\)"),
        (dict(diag_estimate="grad_sq"), r"Relative\(c, estimate="),
        (dict(max_explicit_params=10), r"Exact\(max_params="),
    ]
    for kw, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            IF(task, **kw)
    m = IF(task, solver="projected")  # the solver's default dimension; features follow it
    assert m.projector is m.solver.projector and m.projector.dim == 512
    with pytest.raises(NotFittedError, match="not fitted"):
        IF(task).scores(queries)
    with pytest.raises(ConfigError, match="solver='cg'"):
        IF(task, solver=Exact(max_params=10)).fit(train)
    with pytest.raises(ConfigError, match="projected matrix"):
        IF(task, solver=Projected(dim=20, max_params=10)).fit(train)
    with pytest.raises(ConfigError, match="damping > 0"):
        IF(task, solver="datainf", damping=0.0).fit(train)
    with pytest.raises(ConfigError, match="DataInf's relative damping"):
        IF(task, solver="datainf", damping=Relative(0.1, estimate="hutchinson")).fit(train)
