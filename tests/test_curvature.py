"""Curvature operators and inverse solvers against explicit float64 references."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, hessian, jacrev

import tdakit as tda
from conftest import tiny_data, tiny_mlp
from tdakit.data.sources import as_source
from tdakit.errors import ConfigError, NumericalError
from tdakit.preconditioners import (
    CG,
    EKFAC,
    KFAC,
    SOLVERS,
    Arnoldi,
    CholeskyInverse,
    Curvature,
    CurvatureOperator,
    DataInf,
    Exact,
    LiSSA,
    MatrixProjector,
    Projected,
    Relative,
    as_damping,
    conjugate_gradient,
    make_solver,
    power_iteration,
)
from tdakit.preconditioners.base import relative_damping
from test_grads import loop_grads

N = 37  # not a multiple of the batch size: products must accumulate over uneven batches


def operator(task, X, y, kind: str, **kw) -> CurvatureOperator:
    return CurvatureOperator(task, as_source((X, y)), kind, **kw)


def curvature(task, X, y, kind: str, damping, **kw) -> Curvature:
    return Curvature(task, as_source((X, y)), kind, damping, **kw)


def as_dict(model, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, p in model.named_parameters():
        out[name] = flat[start : start + p.numel()].view_as(p)
        start += p.numel()
    return out


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def ref_hessian(model, X, y) -> torch.Tensor:
    def mean_loss(flat):
        return F.cross_entropy(functional_call(model, as_dict(model, flat), (X,)), y)

    return hessian(mean_loss)(flat_params(model))


def ref_ggn(model, X, y, loss: str = "cross_entropy") -> torch.Tensor:
    def outputs(flat):
        return functional_call(model, as_dict(model, flat), (X,))

    theta = flat_params(model)
    J = jacrev(outputs)(theta)  # [N, C, P]
    if loss == "mse":
        return torch.einsum("ncp,ncq->pq", J, J) / len(X)
    p = torch.softmax(outputs(theta), dim=1)
    Hout = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", J, Hout, J) / len(X)


@pytest.fixture(scope="module")
def small():
    """P = 31: for tests that need one pass over the data per parameter."""
    model = tiny_mlp(d_in=3, hidden=4)
    X, y = tiny_data(n=N, d_in=3)
    return model, tda.Task(model), X, y


@pytest.fixture(scope="module")
def problem():
    model = tiny_mlp()
    X, y = tiny_data(n=N)
    return model, tda.Task(model), X, y


def test_hessian_vector_products_match_explicit_hessian(problem) -> None:
    model, task, X, y = problem
    H = ref_hessian(model, X, y)
    op = operator(task, X, y, "hessian", batch_size=16)
    V = torch.randn(
        task.num_params, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(op.mm(V), H @ V, rtol=1e-10, atol=1e-12)
    assert torch.allclose(op.mv(V[:, 0]), H @ V[:, 0], rtol=1e-10, atol=1e-12)
    assert torch.allclose(op.matrix(chunk=25), H, rtol=1e-10, atol=1e-12)
    assert float(torch.linalg.eigvalsh(H)[0]) < 0  # indefinite: the damping tests rely on it


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_ggn_vector_products_match_explicit_ggn(problem, loss: str) -> None:
    model, _, X, y = problem
    task = tda.Task(model, loss=loss)
    if loss == "mse":
        y = torch.randn(len(X), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    G = ref_ggn(model, X, y, loss)
    op = operator(task, X, y, "ggn", batch_size=16)
    V = torch.randn(
        task.num_params, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    assert torch.allclose(op.mm(V), G @ V, rtol=1e-10, atol=1e-12)
    assert torch.allclose(op.matrix(), G, rtol=1e-10, atol=1e-12)


def test_fisher_products_match_gradient_outer_products(problem) -> None:
    model, task, X, y = problem
    Gr = loop_grads(model, X, y, F.cross_entropy)
    Fm = Gr.T @ Gr / len(X)
    op = operator(task, X, y, "fisher", batch_size=16)
    V = torch.randn(
        task.num_params, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    assert torch.allclose(op.mm(V), Fm @ V, rtol=1e-10, atol=1e-12)
    assert torch.allclose(op.matrix(), Fm, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["ggn", "fisher"])
def test_projected_curvature_is_R_T_C_R(problem, kind: str) -> None:
    model, task, X, y = problem
    C = ref_ggn(model, X, y) if kind == "ggn" else None
    if C is None:
        Gr = loop_grads(model, X, y, F.cross_entropy)
        C = Gr.T @ Gr / len(X)
    op = operator(task, X, y, kind, batch_size=16)
    P = task.num_params
    proj = tda.Projector(12, kind="gaussian", seed=4)
    R = proj.project(as_dict_batched(model, torch.eye(P, dtype=torch.float64)))  # [P, k]
    assert torch.allclose(op.projected(proj), R.T @ C @ R, rtol=1e-9, atol=1e-12)
    M = torch.randn(P, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(op.projected(MatrixProjector(M)), M.T @ C @ M, rtol=1e-9, atol=1e-12)


def as_dict_batched(model, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, p in model.named_parameters():
        out[name] = rows[:, start : start + p.numel()].reshape(len(rows), *p.shape)
        start += p.numel()
    return out


def test_hutchinson_mean_diagonal_is_seeded_and_within_its_standard_error(problem) -> None:
    model, task, X, y = problem
    G = ref_ggn(model, X, y)
    op = operator(task, X, y, "ggn")
    s = 400
    a, b = op.hutchinson_mean_diagonal(s, seed=7), op.hutchinson_mean_diagonal(s, seed=7)
    assert a == b
    assert a != op.hutchinson_mean_diagonal(s, seed=8)
    P = task.num_params
    off = G - torch.diag(torch.diagonal(G))
    std = float(torch.sqrt(2 * off.pow(2).sum() / s)) / P  # exact std of the estimator
    assert abs(a - float(G.diagonal().mean())) < 4 * std


def test_explicit_matrix_refuses_large_models(problem) -> None:
    _, task, X, y = problem
    op = operator(task, X, y, "hessian")
    with pytest.raises(ConfigError, match="cg"):
        op.matrix(max_params=10)


def test_cholesky_inverse_rejects_indefinite_hessian_and_names_the_fix(problem) -> None:
    model, _, X, y = problem
    H = ref_hessian(model, X, y)
    with pytest.raises(NumericalError, match=r"damping.*curvature='ggn'"):
        CholeskyInverse(H, 1e-6, kind="Hessian")
    with pytest.raises(ConfigError, match="damping"):
        CholeskyInverse(H, -1.0)
    lam = 0.1 - float(torch.linalg.eigvalsh(H)[0])
    G = torch.randn(3, len(H), dtype=torch.float64)
    A = H + lam * torch.eye(len(H), dtype=H.dtype)
    ref = torch.linalg.solve(A, G.T).T
    inv = CholeskyInverse(H, lam)
    assert torch.allclose(inv.solve(G), ref, rtol=1e-9, atol=1e-12)
    assert torch.allclose(inv.quadratic(G), (G * ref).sum(1), rtol=1e-9, atol=1e-12)
    assert inv.logdet() == pytest.approx(float(torch.linalg.slogdet(A)[1]), rel=1e-10)


def test_iterative_solvers_on_the_damped_ggn(small) -> None:
    model, task, X, y = small
    G = ref_ggn(model, X, y)
    B = torch.randn(
        4, task.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(6)
    )
    lam = 0.05
    ref = torch.linalg.solve(G + lam * torch.eye(len(G), dtype=G.dtype), B.T).T
    cg = CG(tol=1e-12, block=3).fit(curvature(task, X, y, "ggn", lam))
    assert torch.allclose(cg.apply(B), ref, rtol=1e-8, atol=1e-10)  # two blocks of rows
    top = float(torch.linalg.eigvalsh(G)[-1])
    op = operator(task, X, y, "ggn")
    assert abs(power_iteration(op, iters=60, rtol=1e-6) - top) < 1e-3 * top
    big = 0.5 * top  # well conditioned, so the test stays fast
    ref_big = torch.linalg.solve(G + big * torch.eye(len(G), dtype=G.dtype), B.T).T
    li = LiSSA(scale=1.05 * (top + big), tol=1e-11, depth=200)
    li.fit(curvature(task, X, y, "ggn", big))
    assert torch.allclose(li.apply(B), ref_big, rtol=1e-8, atol=1e-10)


def test_cg_warns_when_not_converged(problem) -> None:
    _, task, X, y = problem
    B = torch.randn(2, task.num_params, dtype=torch.float64)
    cg = CG(tol=1e-14, max_iter=2).fit(curvature(task, X, y, "ggn", 1e-4))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        out = cg.apply(B)
    assert torch.isfinite(out).all()


def test_cg_with_tol_zero_runs_max_iter_silently(small) -> None:
    """tol=0 is a valid option (not replaced by a default): exactly max_iter iterations,
    whose iterate is the A-norm minimiser over the Krylov space, and no warning."""
    model, task, X, y = small
    P, lam, k = task.num_params, 0.05, 5
    A = ref_ggn(model, X, y) + lam * torch.eye(P, dtype=torch.float64)
    B = torch.randn(3, P, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    calls = []
    X5, _ = conjugate_gradient(lambda R: calls.append(1) or R @ A, B, tol=0.0, max_iter=k)
    assert len(calls) == k
    for b, x in zip(B, X5, strict=True):
        Kr = torch.stack([torch.linalg.matrix_power(A, j) @ b for j in range(k)], 1)
        Q, _ = torch.linalg.qr(Kr)
        ref = Q @ torch.linalg.solve(Q.T @ A @ Q, Q.T @ b)
        assert torch.allclose(x, ref, rtol=1e-8, atol=1e-10)
    cg = CG(tol=0.0, max_iter=k).fit(curvature(task, X, y, "ggn", lam))
    assert cg.tol == 0.0 and cg.to_config()["tol"] == 0.0
    products, mm = [], cg.op_.mm
    cg.op_.mm = lambda V, idx=None: products.append(1) or mm(V, idx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = cg.apply(B)
    assert len(products) == k
    assert torch.allclose(out, X5, rtol=1e-8, atol=1e-10)
    with pytest.raises(ConfigError, match=r"tol must be a number >= 0"):
        CG(tol=-1e-6)


def test_lissa_diverges_loudly_with_a_too_small_scale(problem) -> None:
    _, task, X, y = problem
    B = torch.randn(2, task.num_params, dtype=torch.float64)
    top = power_iteration(operator(task, X, y, "ggn"), iters=100)
    li = LiSSA(scale=0.2 * top, depth=500).fit(curvature(task, X, y, "ggn", 1e-3))
    with pytest.raises(NumericalError, match="diverged.*scale"):
        li.apply(B)


def test_arnoldi_recovers_the_top_eigenpairs(small) -> None:
    model, task, X, y = small
    G = ref_ggn(model, X, y)
    mu, U = torch.linalg.eigh(G)
    P, r, lam = task.num_params, 6, 0.01
    solver = Arnoldi(rank=r, krylov_dim=P, seed=3).fit(curvature(task, X, y, "ggn", lam))
    assert torch.allclose(solver.eigenvalues_, mu[-r:], rtol=1e-8, atol=1e-12)
    B = torch.randn(3, P, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    Ur = U[:, -r:]
    ref = ((B @ Ur) / (mu[-r:] + lam)) @ Ur.T
    assert torch.allclose(solver.apply(B), ref, rtol=1e-7, atol=1e-10)


def test_arnoldi_on_a_low_rank_ggn_restarts_and_complement_damping_is_exact() -> None:
    # 3 examples x (C - 1 = 2) give a GGN of rank <= 6 << P: the Krylov space runs out.
    model = tiny_mlp(d_in=3, hidden=4)
    X, y = tiny_data(n=3, d_in=3)
    task = tda.Task(model)
    G = ref_ggn(model, X, y)
    P, lam = task.num_params, 0.02
    full = Arnoldi(rank=P, seed=0).fit(curvature(task, X, y, "ggn", lam))
    assert torch.allclose(full.eigenvalues_, torch.linalg.eigvalsh(G), atol=1e-10)
    B = torch.randn(2, P, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    ref = torch.linalg.solve(G + lam * torch.eye(P, dtype=G.dtype), B.T).T
    assert torch.allclose(full.apply(B), ref, rtol=1e-8, atol=1e-10)
    low = Arnoldi(rank=6, krylov_dim=P, complement="damping", seed=0)
    low.fit(curvature(task, X, y, "ggn", lam))
    assert torch.allclose(low.apply(B), ref, rtol=1e-8, atol=1e-10)


def test_arnoldi_refuses_or_clamps_negative_curvature(small) -> None:
    model, task, X, y = small
    assert float(torch.linalg.eigvalsh(ref_hessian(model, X, y))[0]) < -1e-3
    P = task.num_params
    with pytest.raises(NumericalError, match="negative='clamp'"):
        Arnoldi(rank=P).fit(curvature(task, X, y, "hessian", 1e-6))
    clamped = Arnoldi(rank=P, negative="clamp").fit(curvature(task, X, y, "hessian", 1e-3))
    assert bool((clamped.eigenvalues_ >= 0).all())
    assert torch.isfinite(clamped.apply(torch.randn(2, P, dtype=torch.float64))).all()


def test_relative_damping_object_validates_and_round_trips(small) -> None:
    model, task, X, y = small
    r = Relative(0.2, estimate="grad_sq", samples=8, seed=3)
    assert as_damping(r) is r and as_damping(r.to_config()) == r
    assert as_damping({"relative": 0.5}) == Relative(0.5)
    assert as_damping(0.25) == 0.25 and isinstance(as_damping(1), float)
    for bad, msg in [
        (dict(factor=-0.1), ">= 0"),
        (dict(factor=float("nan")), ">= 0"),
        (dict(factor=True), "must be a number"),
        (dict(estimate="magic"), "Unknown estimate 'magic'"),
        (dict(samples=0), "samples must be a positive int"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            Relative(**bad)
    for bad in (-1.0, float("inf"), True, "1", {"factor": 0.1}):
        with pytest.raises(ConfigError, match="damping|relative"):
            as_damping(bad)
    with pytest.raises(NumericalError, match="positive mean curvature diagonal"):
        relative_damping(0.1, -1.0)
    # estimate="exact" on a matrix-free solver forms the matrix once for the diagonal
    cg = CG().fit(curvature(task, X, y, "ggn", Relative(0.1, estimate="exact")))
    assert cg.damping_ == pytest.approx(0.1 * float(ref_ggn(model, X, y).diagonal().mean()))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "1"])
def test_curvature_rejects_a_bad_damping(small, bad) -> None:
    _, task, X, y = small
    with pytest.raises(ConfigError, match="damping"):
        CG().fit(curvature(task, X, y, "ggn", bad))


def test_solvers_refuse_a_curvature_they_do_not_model(small) -> None:
    _, task, X, y = small
    for solver, kind in [
        (KFAC(), "hessian"),
        (EKFAC(), "fisher"),
        (DataInf(), "ggn"),
        (Projected(dim=4), "hessian"),
    ]:
        with pytest.raises(ConfigError, match=f"{kind!r}|forms the GGN"):
            solver.fit(curvature(task, X, y, kind, 0.1))


def test_make_solver_from_a_name_a_dict_or_an_object() -> None:
    assert set(SOLVERS) == {
        "exact",
        "projected",
        "cg",
        "lissa",
        "arnoldi",
        "kfac",
        "ekfac",
        "datainf",
    }
    for name, cls in SOLVERS.items():
        solver = make_solver(name)
        assert type(solver) is cls and solver.to_config() == cls().to_config()
    cg = CG(tol=1e-4, max_iter=7, block=3)
    assert make_solver(cg) is cg
    solvers = [
        Exact(max_params=10),
        Projected(dim=4, seed=2),
        cg,
        LiSSA(depth=5, seed=1),
        Arnoldi(rank=3, complement="damping"),
        KFAC(),
        EKFAC(),
        DataInf(),
    ]
    for solver in solvers:
        rebuilt = make_solver(solver.to_config())
        assert type(rebuilt) is type(solver) and rebuilt.to_config() == solver.to_config()
    assert make_solver({"name": "cg", "tol": 0.0}).tol == 0.0
    for bad, msg in [
        ("newton", "Unknown solver 'newton'"),
        ({"name": "newton"}, "Unknown solver 'newton'"),
        ({"tol": 1e-3}, "needs a 'name'"),
        ({"name": "cg", "rank": 10}, r"Bad options for solver 'cg'.*rank"),
        ({"name": "cg", "tol": -1.0}, "tol must be a number >= 0"),
        ({"name": "lissa", "depth": 0}, "depth must be an integer > 0"),
        ({"name": "arnoldi", "complement": "zero"}, "complement must be one of"),
        ({"name": "projected", "dim": 0}, "dim must be an integer > 0"),
        (3, "Unknown solver 3"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            make_solver(bad)
