"""Detection and retrieval metrics against hand-computed and brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from tdakit import TdakitError, metrics


def test_mislabel_detection_hand_computed():
    s = torch.tensor([0.9, 0.8, 0.1, 0.7, 0.2])
    flipped = torch.tensor([True, False, False, True, False])
    r = metrics.mislabel_detection(s, flipped, fractions=(0.2, 0.5))
    # positives 0.9 and 0.7 beat 3 and 2 of the 3 negatives -> AUROC 5/6
    # inspection order T F T F F -> AP = (1/1 + 2/3) / 2 = 5/6
    # found after k = 0..5: 0, .5, .5, 1, 1, 1 -> trapezoids * 0.2 = 0.7
    assert r.value == pytest.approx(0.7)
    assert r.details["auroc"] == pytest.approx(5 / 6)
    assert r.details["auprc"] == pytest.approx(5 / 6)
    assert r.details["found_at"] == pytest.approx({0.2: 0.5, 0.5: 0.75})
    assert r.per_query is None and r.n == 5 and r.higher_is_better


def test_mislabel_detection_matches_sklearn_and_brute_force_curve_with_ties():
    gen = torch.Generator().manual_seed(0)
    s = torch.randint(0, 6, (200,), generator=gen).double()  # many ties
    flipped = torch.rand(200, generator=gen) < 0.2 + 0.1 * s / 5
    r = metrics.mislabel_detection(s, flipped, seed=1)
    assert r.details["auroc"] == pytest.approx(roc_auc_score(flipped, s))
    assert r.details["auprc"] == pytest.approx(average_precision_score(flipped, s))
    # brute force: expected curve over random orders within ties = average many shuffles
    rng = np.random.default_rng(0)
    sn, fn = s.numpy(), flipped.numpy()
    areas = []
    for _ in range(400):
        order = np.lexsort((rng.random(200), -sn))
        found = np.concatenate([[0.0], np.cumsum(fn[order]) / fn.sum()])
        areas.append(np.trapezoid(found, np.linspace(0, 1, 201)))
    assert r.value == pytest.approx(np.mean(areas), abs=2e-3)
    lo, hi = r.ci
    assert lo < r.value < hi
    assert r.details["auroc_ci"][0] < r.details["auroc"] < r.details["auroc_ci"][1]
    assert r.ci == metrics.mislabel_detection(s, flipped, seed=1).ci


def test_mislabel_detection_random_scores_give_one_half_and_errors():
    gen = torch.Generator().manual_seed(1)
    flipped = torch.rand(4000, generator=gen) < 0.1
    r = metrics.mislabel_detection(torch.rand(4000, generator=gen), flipped)
    assert r.value == pytest.approx(0.5, abs=0.03) and r.ci[0] < 0.5 < r.ci[1]
    with pytest.raises(TdakitError, match="at least one"):
        metrics.mislabel_detection(torch.rand(4), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(TdakitError, match="boolean"):
        metrics.mislabel_detection(torch.rand(4), torch.tensor([1, 0, 0, 1]))
    with pytest.raises(TdakitError, match="dimension 0"):
        metrics.mislabel_detection(torch.rand(4), torch.ones(5, dtype=torch.bool))


def test_backdoor_detection_matches_sklearn_per_query():
    gen = torch.Generator().manual_seed(2)
    triggered = torch.zeros(50, dtype=torch.bool)
    triggered[:5] = True
    S = torch.randn(8, 50, generator=gen, dtype=torch.float64) + 1.5 * triggered
    S[0] = torch.round(S[0])  # ties
    r = metrics.backdoor_detection(S, triggered)
    ref = [average_precision_score(triggered, S[q]) for q in range(8)]
    assert r.per_query.numpy() == pytest.approx(np.array(ref))
    assert r.details["auroc"] == pytest.approx(
        np.mean([roc_auc_score(triggered, S[q]) for q in range(8)])
    )
    assert r.details["base_rate"] == pytest.approx(0.1)
    per_query_rel = torch.zeros(8, 50, dtype=torch.bool)
    per_query_rel[:, :5] = True
    assert metrics.backdoor_detection(S, per_query_rel).value == pytest.approx(r.value)
    with pytest.raises(TdakitError, match="no relevant"):
        metrics.backdoor_detection(S, torch.zeros(50, dtype=torch.bool))


def test_recall_at_k_and_mrr_hand_computed():
    S = torch.tensor([[0.1, 0.9, 0.5, 0.0], [0.3, 0.2, 0.1, 0.4]])
    rel = torch.tensor([False, False, True, True])
    # q0 ranking 1, 2, 0, 3: first relevant (2) at rank 2; q1 ranking 3, 0, 1, 2: rank 1
    assert metrics.mrr(S, rel).value == pytest.approx((1 / 2 + 1) / 2)
    # top-2: q0 {1, 2} -> 1 of 2 relevant; q1 {3, 0} -> 1 of 2
    r = metrics.recall_at_k(S, rel, k=2)
    assert r.value == pytest.approx(0.5) and r.details["precision"] == pytest.approx(0.5)
    assert r.name == "recall@2"
    idx = torch.tensor([[1, 0, 2], [0, 1, 2]])  # ranked lists (MRR@3)
    assert metrics.mrr(idx, rel).value == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert metrics.mrr(idx[:, :2], rel).value == 0.0
    assert metrics.recall_at_k(idx, rel, k=3).value == pytest.approx(0.5)
    # ties count against the method: relevant tied with one non-relevant -> rank 2
    tie = metrics.mrr(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([True, False, False]))
    assert tie.value == pytest.approx(0.5)


def test_retrieval_matches_brute_force_loop():
    gen = torch.Generator().manual_seed(3)
    S = torch.randn(10, 30, generator=gen, dtype=torch.float64)
    rel = torch.rand(10, 30, generator=gen) < 0.15
    rel[:, 0] = True
    rr, rec = [], []
    for q in range(10):
        order = np.argsort(-S[q].numpy())
        first = next(pos for pos, i in enumerate(order) if rel[q, i])
        rr.append(1.0 / (first + 1))
        rec.append(rel[q, order[:5]].sum().item() / rel[q].sum().item())
    assert metrics.mrr(S, rel).value == pytest.approx(np.mean(rr))
    assert metrics.recall_at_k(S, rel, k=5).value == pytest.approx(np.mean(rec))


def test_class_and_subclass_detection_hand_computed():
    S = torch.tensor([[0.9, 0.1, 0.8, 0.7], [0.0, 0.5, 0.6, 0.1]])
    train_labels = torch.tensor([0, 1, 0, 1])
    query_labels = torch.tensor([0, 0])
    # q0 top-3 = 0, 2, 3 -> labels 0, 0, 1 -> 2/3; q1 top-3 = 2, 1, 3 -> 0, 1, 1 -> 1/3
    r = metrics.class_detection(S, train_labels, query_labels, s=3)
    assert r.per_query.tolist() == pytest.approx([2 / 3, 1 / 3]) and r.value == pytest.approx(0.5)
    idx = torch.tensor([[0, 2, 3, 1], [2, 1, 3, 0]])
    assert metrics.class_detection(idx, train_labels, query_labels, s=3).value == r.value
    sub = metrics.subclass_detection(S, torch.tensor([0, 2, 1, 3]), torch.tensor([1, 2]), s=1)
    # q0 top-1 = 0 (subclass 0 != 1); q1 top-1 = 2 (subclass 1 != 2)
    assert sub.value == 0.0 and sub.name == "subclass_detection"
    with pytest.raises(TdakitError, match="integer labels"):
        metrics.class_detection(S, train_labels.float(), query_labels, s=3)
    with pytest.raises(TdakitError, match="k=5"):
        metrics.class_detection(S, train_labels, query_labels, s=5)
    with pytest.raises(TdakitError, match="outside"):
        metrics.class_detection(idx + 1, train_labels, query_labels, s=4)
    with pytest.raises(TdakitError, match="dimension 0"):
        metrics.class_detection(S, train_labels, torch.tensor([0, 0, 1]), s=3)


def test_topk_cardinality_hand_computed_and_ci():
    idx = torch.tensor([[0, 1], [1, 2]])
    r = metrics.topk_cardinality(idx, k=2)  # union {0, 1, 2} / (2 * 2)
    assert r.value == pytest.approx(0.75) and r.details["n_unique"] == 3
    S = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    assert metrics.topk_cardinality(S, k=1).value == pytest.approx(1.0)
    same = torch.tensor([[4, 5]] * 20)
    assert metrics.topk_cardinality(same, k=2).value == pytest.approx(1 / 20)
    gen = torch.Generator().manual_seed(0)
    big = torch.randint(0, 200, (60, 5), generator=gen)
    rb = metrics.topk_cardinality(big, k=5, seed=3)
    brute = len(set(big.flatten().tolist())) / 300
    assert rb.value == pytest.approx(brute) and rb.ci[0] < rb.value < rb.ci[1]
    assert rb.ci == metrics.topk_cardinality(big, k=5, seed=3).ci


def test_counting_and_sorting_rank_statistics_agree_with_sklearn():
    from tdakit.metrics.functional import (
        auroc_ap_from_codes,
        auroc_rows,
        average_precision_rows,
        rankdata,
    )

    gen = torch.Generator().manual_seed(7)
    s = torch.randint(0, 8, (40,), generator=gen).double()
    lab = torch.rand(40, generator=gen) < 0.3
    values, codes = torch.unique(s, return_inverse=True)
    idx = metrics.bootstrap_indices(40, 20, seed=0)
    auroc, ap = auroc_ap_from_codes(codes[idx], lab[idx], len(values))
    for b in range(20):
        assert auroc[b] == pytest.approx(roc_auc_score(lab[idx[b]], s[idx[b]]))
        assert ap[b] == pytest.approx(average_precision_score(lab[idx[b]], s[idx[b]]))
    assert torch.allclose(auroc_rows(s[idx], lab[idx]), auroc)
    assert torch.allclose(average_precision_rows(s[idx], lab[idx]), ap)
    assert rankdata(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
