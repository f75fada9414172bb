"""Curvature operators and inverse solvers against explicit float64 references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, hessian, jacrev

import tdakit as tda
from conftest import tiny_data, tiny_mlp
from tdakit.curvature.iterative import CGSolver, LissaSolver, power_iteration
from tdakit.curvature.lanczos import ArnoldiSolver
from tdakit.curvature.operators import CurvatureOperator, MatrixProjector
from tdakit.curvature.solvers import ExactSolver
from test_grads import loop_grads

N = 37  # not a multiple of the batch size: products must accumulate over uneven batches


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
    op = CurvatureOperator(task, X, y, "hessian", batch_size=16)
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
    op = CurvatureOperator(task, X, y, "ggn", batch_size=16)
    V = torch.randn(
        task.num_params, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    assert torch.allclose(op.mm(V), G @ V, rtol=1e-10, atol=1e-12)
    assert torch.allclose(op.matrix(), G, rtol=1e-10, atol=1e-12)


def test_fisher_products_match_gradient_outer_products(problem) -> None:
    model, task, X, y = problem
    Gr = loop_grads(model, X, y, F.cross_entropy)
    Fm = Gr.T @ Gr / len(X)
    op = CurvatureOperator(task, X, y, "fisher", batch_size=16)
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
    op = CurvatureOperator(task, X, y, kind, batch_size=16)
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
    op = CurvatureOperator(task, X, y, "ggn")
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
    op = CurvatureOperator(task, X, y, "hessian")
    with pytest.raises(tda.TdakitError, match="cg"):
        op.matrix(max_params=10)


def test_exact_solver_rejects_indefinite_hessian_and_names_the_fix(problem) -> None:
    model, _, X, y = problem
    H = ref_hessian(model, X, y)
    with pytest.raises(tda.TdakitError, match=r"damping.*curvature='ggn'"):
        ExactSolver(H, 1e-6, kind="Hessian")
    with pytest.raises(tda.TdakitError, match="damping"):
        ExactSolver(H, -1.0)
    lam = 0.1 - float(torch.linalg.eigvalsh(H)[0])
    G = torch.randn(3, len(H), dtype=torch.float64)
    ref = torch.linalg.solve(H + lam * torch.eye(len(H), dtype=H.dtype), G.T).T
    assert torch.allclose(ExactSolver(H, lam).apply(G), ref, rtol=1e-9, atol=1e-12)


def test_iterative_solvers_on_the_damped_ggn(small) -> None:
    model, task, X, y = small
    G = ref_ggn(model, X, y)
    op = CurvatureOperator(task, X, y, "ggn")
    B = torch.randn(
        4, task.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(6)
    )
    lam = 0.05
    ref = torch.linalg.solve(G + lam * torch.eye(len(G), dtype=G.dtype), B.T).T
    cg = CGSolver(op, lam, tol=1e-12, block=3).apply(B)  # two blocks of right-hand sides
    assert torch.allclose(cg, ref, rtol=1e-8, atol=1e-10)
    top = float(torch.linalg.eigvalsh(G)[-1])
    assert abs(power_iteration(op, iters=60, rtol=1e-6) - top) < 1e-3 * top
    big = 0.5 * top  # well conditioned, so the test stays fast
    ref_big = torch.linalg.solve(G + big * torch.eye(len(G), dtype=G.dtype), B.T).T
    li = LissaSolver(op, big, scale=1.05 * (top + big), tol=1e-11, depth=200).apply(B)
    assert torch.allclose(li, ref_big, rtol=1e-8, atol=1e-10)


def test_cg_warns_when_not_converged(problem) -> None:
    _, task, X, y = problem
    op = CurvatureOperator(task, X, y, "ggn")
    B = torch.randn(2, task.num_params, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        out = CGSolver(op, 1e-4, tol=1e-14, max_iter=2).apply(B)
    assert torch.isfinite(out).all()


def test_lissa_diverges_loudly_with_a_too_small_scale(problem) -> None:
    _, task, X, y = problem
    op = CurvatureOperator(task, X, y, "ggn")
    B = torch.randn(2, task.num_params, dtype=torch.float64)
    top = power_iteration(op, iters=100)
    with pytest.raises(tda.TdakitError, match="diverged.*scale"):
        LissaSolver(op, 1e-3, scale=0.2 * top, depth=500).apply(B)


def test_arnoldi_recovers_the_top_eigenpairs(small) -> None:
    model, task, X, y = small
    G = ref_ggn(model, X, y)
    mu, U = torch.linalg.eigh(G)
    op = CurvatureOperator(task, X, y, "ggn")
    P, r, lam = task.num_params, 6, 0.01
    solver = ArnoldiSolver(op, lam, rank=r, krylov_dim=P, seed=3)
    assert torch.allclose(solver.eigenvalues, mu[-r:], rtol=1e-8, atol=1e-12)
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
    op = CurvatureOperator(task, X, y, "ggn")
    full = ArnoldiSolver(op, lam, rank=P, seed=0)
    assert torch.allclose(full.eigenvalues, torch.linalg.eigvalsh(G), atol=1e-10)
    B = torch.randn(2, P, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    ref = torch.linalg.solve(G + lam * torch.eye(P, dtype=G.dtype), B.T).T
    assert torch.allclose(full.apply(B), ref, rtol=1e-8, atol=1e-10)
    low = ArnoldiSolver(op, lam, rank=6, krylov_dim=P, complement="damping", seed=0)
    assert torch.allclose(low.apply(B), ref, rtol=1e-8, atol=1e-10)


def test_arnoldi_refuses_or_clamps_negative_curvature(small) -> None:
    model, task, X, y = small
    assert float(torch.linalg.eigvalsh(ref_hessian(model, X, y))[0]) < -1e-3
    op = CurvatureOperator(task, X, y, "hessian")
    P = task.num_params
    with pytest.raises(tda.TdakitError, match="negative='clamp'"):
        ArnoldiSolver(op, 1e-6, rank=P)
    clamped = ArnoldiSolver(op, 1e-3, rank=P, negative="clamp")
    assert bool((clamped.eigenvalues >= 0).all())
    assert torch.isfinite(clamped.apply(torch.randn(2, P, dtype=torch.float64))).all()
