"""LDS, LOO correlation and further-training agreement against hand and brute-force values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from tdakit import TdakitError, metrics


def test_lds_hand_computed():
    S = torch.tensor([[1.0, 2.0, 4.0]])
    masks = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    losses = torch.tensor([[4.0], [3.0], [1.0], [2.0]])
    # predictions 1, 2, 3, 4 (ranks 1..4); -loss = -4, -3, -1, -2 (ranks 1, 2, 4, 3)
    # Spearman = 1 - 6 * (0 + 0 + 1 + 1) / (4 * 15) = 0.8
    r = metrics.lds(S, masks, losses)
    assert r.value == pytest.approx(0.8) and r.n == 1 and r.ci == pytest.approx((0.8, 0.8))
    assert r.details["M"] == 4 and r.details["R"] == 1
    assert r.details["alpha"] == pytest.approx(5 / 12)


def test_lds_matches_scipy_loop_and_averages_repeats():
    gen = torch.Generator().manual_seed(0)
    S = torch.randn(6, 12, generator=gen, dtype=torch.float64)
    masks = torch.rand(15, 12, generator=gen) < 0.5
    losses = torch.randn(15, 2, 6, generator=gen, dtype=torch.float64)  # R = 2
    r = metrics.lds(S, masks, losses)
    mean_loss = losses.mean(1).numpy()
    pred = masks.double().numpy() @ S.numpy().T
    ref = [sps.spearmanr(pred[:, q], -mean_loss[:, q])[0] for q in range(6)]
    assert r.per_query.numpy() == pytest.approx(np.array(ref), abs=1e-12)
    assert r.value == pytest.approx(np.mean(ref)) and r.details["R"] == 2


def test_lds_constant_outcome_excluded_with_warning():
    S = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]], dtype=torch.float64)
    masks = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    losses = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [0.0, 5.0]])
    with pytest.warns(RuntimeWarning, match="excluded"):
        r = metrics.lds(S, masks, losses)
    assert r.n == 1 and r.details["n_excluded_queries"] == 1 and math.isnan(r.per_query[1])


# --- ridge regression: closed-form ground truth for many subsets ------------------------
N, D, NQ = 40, 5, 40


def _ridge_problem(lam: float):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D))
    w = rng.normal(size=D)
    y = X @ w + 0.5 * rng.normal(size=N)
    Xq = rng.normal(size=(NQ, D))
    yq = Xq @ w + 0.5 * rng.normal(size=NQ)

    def query_losses(masks: np.ndarray) -> np.ndarray:  # [M, NQ], one ridge fit per subset
        m = masks.astype(float)
        A = np.einsum("mn,ni,nj->mij", m, X, X) + lam * np.eye(D)
        b = np.einsum("mn,ni,n->mi", m, X, y)
        theta = np.linalg.solve(A, b[..., None])[..., 0]
        return 0.5 * (theta @ Xq.T - yq) ** 2

    return query_losses


def _half_subsets(M: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(N) < N // 2 for _ in range(M)])


def test_lds_high_for_exact_loo_scores_and_zero_for_random():
    query_losses = _ridge_problem(lam=300.0)
    full = query_losses(np.ones((1, N), bool))[0]
    loo = query_losses(~np.eye(N, dtype=bool))  # [N, NQ]: model without example i
    S_exact = torch.tensor((loo - full).T)  # + = removing i raises the query's loss
    masks = _half_subsets(100, seed=1)
    losses = torch.tensor(query_losses(masks))
    m = torch.tensor(masks)
    exact = metrics.lds(S_exact, m, losses, seed=0)
    assert exact.value > 0.9 and exact.ci[0] > 0.8
    assert metrics.lds(-S_exact, m, losses).value < -0.9  # sign convention matters
    randoms = [
        metrics.lds(torch.randn(NQ, N, generator=torch.Generator().manual_seed(s)), m, losses)
        for s in range(10)
    ]
    assert abs(np.mean([r.value for r in randoms])) < 0.05
    assert all(r.ci[0] < 0.25 for r in randoms)
    cmp = metrics.compare(exact, randoms[0])
    assert cmp.difference > 0.7 and cmp.p_value < 1e-6


def test_lds_errors():
    S, masks, losses = torch.zeros(2, 5), torch.zeros(4, 5, dtype=torch.bool), torch.zeros(4, 2)
    with pytest.raises(TdakitError, match="boolean"):
        metrics.lds(S, masks.float(), losses)
    with pytest.raises(TdakitError, match="dimension 1"):
        metrics.lds(S, torch.zeros(4, 6, dtype=torch.bool), losses)
    with pytest.raises(TdakitError, match="dimension 1"):
        metrics.lds(S, masks, torch.zeros(4, 3))
    with pytest.raises(TdakitError, match="floating"):
        metrics.lds(S.long(), masks, losses)
    with pytest.raises(TdakitError, match="NaN"):
        metrics.lds(torch.full((2, 5), float("nan")), masks, losses)
    with pytest.raises(TdakitError, match="empty"):
        metrics.lds(torch.zeros(0, 5), masks, torch.zeros(4, 0))
    with pytest.raises(TdakitError, match="at least 3"):
        metrics.lds(S, masks[:2], losses[:2])
    with pytest.raises(TdakitError, match="torch.Tensor"):
        metrics.lds([[1.0]], masks, losses)


def test_loo_correlation_hand_computed():
    # x = 1,2,3 (dev -1,0,1); y = 2,4,7 (mean 13/3, dev -7/3,-1/3,8/3); cov sum = 5;
    # sum dev_x^2 = 2; sum dev_y^2 = 114/9 -> r = 5 / sqrt(2 * 114 / 9)
    r = metrics.loo_correlation(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0, 4.0, 7.0]]))
    assert r.value == pytest.approx(5 / math.sqrt(2 * 114 / 9))
    assert r.details["spearman"] == pytest.approx(1.0)


def test_loo_correlation_with_indices_matches_scipy():
    gen = torch.Generator().manual_seed(4)
    S = torch.randn(5, 20, generator=gen, dtype=torch.float64)
    idx = torch.tensor([3, 7, 0, 19, 11, 5])
    loo = S[:, idx] + 0.5 * torch.randn(5, 6, generator=gen, dtype=torch.float64)
    r = metrics.loo_correlation(S, loo, indices=idx)
    ref = [sps.pearsonr(S[q, idx].numpy(), loo[q].numpy())[0] for q in range(5)]
    ref_s = [sps.spearmanr(S[q, idx].numpy(), loo[q].numpy())[0] for q in range(5)]
    assert r.per_query.numpy() == pytest.approx(np.array(ref), abs=1e-12)
    assert r.details["spearman_per_query"].numpy() == pytest.approx(np.array(ref_s), abs=1e-12)
    with pytest.raises(TdakitError, match="indices"):
        metrics.loo_correlation(S, loo, indices=torch.tensor([0, 1, 2, 3, 4, 25]))
    with pytest.raises(TdakitError, match="dimension 1"):
        metrics.loo_correlation(S, loo)


def test_further_training_agreement_hand_computed():
    S = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0]])
    gold = torch.tensor(
        [
            [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]],  # t=0
            [[2.0, 0.0, 4.0], [0.0, 0.0, 3.0]],  # t=1
        ]
    )
    r = metrics.further_training_agreement(S, gold, t=[1, 5])
    # cosines: q0,t0 = 1/(sqrt5*sqrt2); q1,t0 = 1; q0,t1 = 1; q1,t1 = 0
    cos = torch.tensor([[1 / math.sqrt(10), 1.0], [1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(r.details["cosine_per_query"], cos)
    assert torch.allclose(r.details["cosine"], cos.mean(0))
    assert r.value == pytest.approx(float(cos.mean()))
    assert r.details["t"] == [1.0, 5.0] and r.details["cosine_ci"].shape == (2, 2)
    # Spearman q0,t0: ranks (2,1,3) vs (2.5,2.5,1) -> -0.866; q0,t1: 1; q1,t1: (2.5,2.5,1) vs
    # (1.5,1.5,3) -> -1; q1,t0: identical -> 1
    spear = r.details["spearman_per_query"]
    assert spear[0, 0] == pytest.approx(sps.spearmanr([1, 0, 2], [1, 1, 0])[0])
    assert spear[:, 1].tolist() == pytest.approx([1.0, -1.0])
    single = metrics.further_training_agreement(S, gold[1])
    assert single.value == pytest.approx(0.5)
    with pytest.raises(TdakitError, match="t has"):
        metrics.further_training_agreement(S, gold, t=[1])
