"""Retraining metrics with closed-form ridge "recipes": every number is re-derived in numpy
from the subsets the recipe was actually asked to train on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch import nn

import tdakit as tda
from conftest import tiny_data, tiny_mlp
from tdakit import TdakitError, metrics

LAM = 1.0


def ridge(X: np.ndarray, T: np.ndarray) -> np.ndarray:
    return np.linalg.solve(X.T @ X + LAM * np.eye(X.shape[1]), X.T @ T)


class RidgeRecipe:
    """Closed-form ridge: regression (``mse``) or a one-hot ridge classifier (cross-entropy)."""

    def __init__(self, classes: int | None = None) -> None:
        self.classes = classes
        self.loss = "mse" if classes is None else "cross_entropy"
        self.calls: list[np.ndarray | None] = []

    def targets(self, y: np.ndarray) -> np.ndarray:
        return y[:, None] if self.classes is None else np.eye(self.classes)[y]

    def train(self, X, y, *, indices=None, init_seed=0, batch_seed=0) -> nn.Module:
        idx = np.arange(len(X)) if indices is None else np.asarray(indices)
        self.calls.append(None if indices is None else idx.copy())
        W = ridge(X.numpy()[idx], self.targets(y.numpy()[idx]))
        lin = nn.Linear(W.shape[0], W.shape[1], bias=False, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T))
        return lin


def ridge_classifier(X, y, indices, init_seed, batch_seed) -> nn.Module:
    """A plain training function: no recipe object, no loss attribute."""
    return RidgeRecipe(classes=3).train(X, y, indices=indices)


def _regression(n=30, d=4, nq=8, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    X, Xq = rng.normal(size=(n, d)), rng.normal(size=(nq, d))
    y, yq = X @ w + 0.7 * rng.normal(size=n), Xq @ w + 0.7 * rng.normal(size=nq)
    return [torch.from_numpy(a) for a in (X, y, Xq, yq)]


def _blobs(n=45, nq=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 4)) * 1.2
    y, yq = np.arange(n) % classes, rng.integers(0, classes, nq)
    X = centres[y] + rng.normal(size=(n, 4))
    Xq = centres[yq] + rng.normal(size=(nq, 4))
    return torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(Xq), torch.from_numpy(yq)


def _kept_removed(call: np.ndarray, n: int) -> np.ndarray:
    return np.setdiff1d(np.arange(n), call)


def test_counterfactual_sensitivity_regression_matches_closed_form():
    X, y, Xq, yq = _regression()
    n, k = len(X), 3
    Xn, yn, Xqn, yqn = X.numpy(), y.numpy(), Xq.numpy(), yq.numpy()

    def qloss(idx):
        return 0.5 * (Xqn @ ridge(Xn[idx], yn[idx]) - yqn) ** 2

    full = qloss(np.arange(n))
    S = np.stack([qloss(np.delete(np.arange(n), i)) - full for i in range(n)], axis=1)
    recipe = RidgeRecipe()
    r = metrics.counterfactual_sensitivity(
        torch.from_numpy(S), recipe, X, y, Xq, yq, k=k, random_seed=4, progress=False
    )
    assert recipe.calls[0] is None
    planned = set()
    for q in range(len(Xq)):
        gen = torch.Generator().manual_seed(4 * 1_000_003 + q)
        removed = {"method": np.argsort(-S[q])[:k], "random": torch.randperm(n, generator=gen)[:k]}
        method_call, random_call = (
            np.setdiff1d(np.arange(n), np.asarray(removed[w])) for w in ("method", "random")
        )
        planned |= {tuple(method_call), tuple(random_call)}
        assert r.per_query[q] == pytest.approx(qloss(method_call)[q] - full[q], abs=1e-10)
        rand = r.details["random"].per_query[q]
        assert rand == pytest.approx(qloss(random_call)[q] - full[q], abs=1e-10)
    # every planned retraining ran exactly once (identical runs share one job)
    assert sorted(tuple(c) for c in recipe.calls[1:]) == sorted(planned)
    assert r.value > 0 and r.value > r.details["random"].value
    assert r.details["vs_random"].difference == pytest.approx(r.value - r.details["random"].value)
    assert "flip_rate" not in r.details  # regression: no class prediction
    again = metrics.counterfactual_sensitivity(
        torch.from_numpy(S), RidgeRecipe(), X, y, Xq, yq, k=k, random_seed=4, progress=False
    )
    assert torch.equal(again.details["random"].per_query, r.details["random"].per_query)


def test_counterfactual_sensitivity_classification_flips_and_entropy():
    X, y, Xq, yq = _blobs()
    n, k = len(X), 6
    recipe = RidgeRecipe(classes=3)
    S = torch.randn(len(Xq), n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    top = torch.topk(S, k, dim=1).indices
    r = metrics.counterfactual_sensitivity(top, recipe, X, y, Xq, yq, k=k, progress=False)

    def evaluate(idx, q):
        logits = Xq.numpy()[q] @ ridge(X.numpy()[idx], np.eye(3)[y.numpy()[idx]])
        p = np.exp(logits - logits.max())
        p /= p.sum()
        return -np.log(p[yq[q]]), logits.argmax(), -(p * np.log(p)).sum(), p

    delta_p = []
    for q in range(len(Xq)):
        l0, p0, h0, probs0 = evaluate(np.arange(n), q)
        l1, p1, h1, probs1 = evaluate(recipe.calls[1 + 2 * q], q)
        delta_p.append(probs1[p0] - probs0[p0])
        assert set(_kept_removed(recipe.calls[1 + 2 * q], n)) == set(top[q].tolist())
        assert r.per_query[q] == pytest.approx(l1 - l0)
        assert r.details["flips"][q] == float(p1 != p0)
        assert r.details["delta_entropy_per_query"][q] == pytest.approx(h1 - h0)
    assert r.details["flip_rate"] == pytest.approx(float(r.details["flips"].mean()))
    assert r.details["delta_prob"] == pytest.approx(float(np.mean(delta_p)))
    assert "flip_rate_random" in r.details and "delta_entropy_random_ci" in r.details
    summary = json.loads(json.dumps(r.to_dict()))  # reports can serialise every field
    assert summary["details"]["vs_random"]["n"] == len(Xq)


def test_counterfactual_sensitivity_with_a_function_recipe_defaults_to_cross_entropy():
    X, y, Xq, yq = _blobs()
    S = torch.randn(len(Xq), len(X), generator=torch.Generator().manual_seed(1))
    kw = {"k": 4, "random_seed": 2, "progress": False}
    ref = metrics.counterfactual_sensitivity(S, RidgeRecipe(classes=3), X, y, Xq, yq, **kw)
    recipe = tda.training.FunctionRecipe(ridge_classifier)  # loss=None: cross-entropy
    r = metrics.counterfactual_sensitivity(S, recipe, X, y, Xq, yq, **kw)
    assert torch.equal(r.per_query, ref.per_query)
    assert torch.equal(r.details["flips"], ref.details["flips"])


def test_counterfactual_sensitivity_errors():
    X, y, Xq, yq = _regression(n=10, nq=2)
    S = torch.zeros(2, 10, dtype=torch.float64)
    with pytest.raises(TdakitError, match="recipe"):
        metrics.counterfactual_sensitivity(S, object(), X, y, Xq, yq, k=2)
    with pytest.raises(TdakitError, match="rows"):
        metrics.counterfactual_sensitivity(S[:1], RidgeRecipe(), X, y, Xq, yq, k=2)
    with pytest.raises(TdakitError, match="k=10"):
        metrics.counterfactual_sensitivity(S, RidgeRecipe(), X, y, Xq, yq, k=10)
    with pytest.raises(TdakitError, match="loss"):
        metrics.counterfactual_sensitivity(S, RidgeRecipe(), X, y, Xq, yq, k=2, loss="hinge")


def test_coreset_selection_matches_closed_form_accuracies():
    X, y, Xt, yt = _blobs(n=60, nq=40, seed=1)
    scores = torch.randn(60, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    recipe = RidgeRecipe(classes=3)
    budgets, seeds = [6, 15], [0, 1]
    r = metrics.coreset_selection(scores, recipe, X, y, Xt, yt, budgets, seeds, progress=False)

    def accuracy(idx):
        W = ridge(X.numpy()[idx], np.eye(3)[y.numpy()[idx]])
        return float(((Xt.numpy() @ W).argmax(1) == yt.numpy()).mean())

    order = np.argsort(-scores.numpy(), kind="stable")
    calls = iter(recipe.calls)
    for bi, b in enumerate(budgets):
        for si in range(len(seeds)):
            top, rand = next(calls), next(calls)
            assert sorted(top) == sorted(order[:b])
            assert len(set(rand.tolist())) == b
            assert r.details["accuracy_runs"][bi, si] == pytest.approx(accuracy(top))
            assert r.details["random_accuracy_runs"][bi, si] == pytest.approx(accuracy(rand))
    runs = r.details["accuracy_runs"]
    assert r.value == pytest.approx(float(runs.mean())) and r.n == 4
    assert r.details["accuracy"].tolist() == pytest.approx(runs.mean(1).tolist())
    assert r.details["accuracy_ci"].shape == (2, 2)
    ranked = metrics.coreset_selection(
        torch.from_numpy(order.copy()),
        RidgeRecipe(3),
        X,
        y,
        Xt,
        yt,
        budgets,
        seeds,
        progress=False,
    )
    assert torch.equal(ranked.per_query, r.per_query)
    assert metrics.compare(r, ranked).p_value == 1.0
    with pytest.raises(TdakitError, match=r"S.sum\(0\)"):
        metrics.coreset_selection(scores[None], recipe, X, y, Xt, yt, budgets)
    with pytest.raises(TdakitError, match="exceeds"):
        metrics.coreset_selection(scores, recipe, X, y, Xt, yt, [61])
    with pytest.raises(TdakitError, match="distinct"):
        metrics.coreset_selection(torch.tensor([0, 0, 1]), recipe, X, y, Xt, yt, [2])


def _graddot(task):
    return tda.GradDot(task)


def test_randomised_copy_redraws_chosen_layers_only_and_is_seeded():
    model = tiny_mlp()
    assert metrics.model_layers(model) == ["2", "0"]
    top = metrics.randomised_copy(model, layers=["2"], seed=3)
    assert not torch.allclose(top[2].weight, model[2].weight)
    assert torch.equal(top[0].weight, model[0].weight)
    assert torch.equal(
        metrics.randomised_copy(model, layers=["2"], seed=3)[2].weight, top[2].weight
    )
    both = metrics.randomised_copy(model, seed=3)
    assert torch.equal(both[2].weight, top[2].weight)  # a layer's draw ignores the others
    assert not torch.equal(metrics.randomised_copy(model, seed=4)[2].weight, top[2].weight)
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    bn[1].running_mean.fill_(2.0)
    assert torch.equal(metrics.randomised_copy(bn)[1].running_mean, torch.full((3,), 2.0))
    with pytest.raises(TdakitError, match="Unknown layers"):
        metrics.randomised_copy(model, layers=["5"])


def test_model_randomisation_matches_brute_force_spearman():
    task = tda.Task(tiny_mlp(), loss="cross_entropy")
    train, queries = tiny_data(n=25), tiny_data(n=6, seed=9)
    r = metrics.model_randomisation(_graddot, task, train, queries, seed=1, progress=False)
    S0 = tda.GradDot(task).fit(train).scores(queries)
    S1 = (
        tda.GradDot(task.at(metrics.randomised_copy(task.model, seed=1))).fit(train).scores(queries)
    )
    ref = [sps.spearmanr(S0[q].numpy(), S1[q].numpy())[0] for q in range(6)]
    assert r.per_query.numpy() == pytest.approx(np.array(ref), abs=1e-12)
    assert not r.higher_is_better and r.value < 0.9
    casc = metrics.model_randomisation(
        _graddot, task, train, queries, cascading=True, seed=1, progress=False
    )
    assert casc.details["layers"] == ["2", "0"] and len(casc.details["per_layer"]) == 2
    assert casc.value == pytest.approx(r.value)  # last cascade step = everything randomised
    S_top = tda.GradDot(task.at(metrics.randomised_copy(task.model, layers=["2"], seed=1)))
    S_top = S_top.fit(train).scores(queries)
    ref_top = np.mean([sps.spearmanr(S0[q].numpy(), S_top[q].numpy())[0] for q in range(6)])
    assert casc.details["spearman_by_layer"][0] == pytest.approx(ref_top)


def test_model_randomisation_flags_a_model_independent_method():
    task = tda.Task(tiny_mlp(), loss="cross_entropy")
    train, queries = tiny_data(n=20), tiny_data(n=4, seed=9)
    r = metrics.model_randomisation(
        lambda t: tda.RandomBaseline(t, seed=0), task, train, queries, progress=False
    )
    assert r.value == pytest.approx(1.0)  # ignores the model: fails the test
    with pytest.raises(TdakitError, match="tdakit.Task"):
        metrics.model_randomisation(_graddot, tiny_mlp(), train, queries)


def test_coreset_per_class_keeps_the_classes_balanced():
    X, y, Xt, yt = _blobs(n=60, nq=40, seed=1)
    scores = y.double() * 10 + torch.rand(60, generator=torch.Generator().manual_seed(0))
    recipe = RidgeRecipe(classes=3)
    metrics.coreset_selection(scores, recipe, X, y, Xt, yt, [9], [0], progress=False)
    assert set(y[torch.from_numpy(recipe.calls[0])].tolist()) == {
        2
    }  # the naive rule: one class only
    recipe = RidgeRecipe(classes=3)
    metrics.coreset_selection(
        scores, recipe, X, y, Xt, yt, [9], [0], per_class=True, progress=False
    )
    top, rand = (torch.from_numpy(c) for c in recipe.calls)
    for idx in (top, rand):
        assert torch.bincount(y[idx], minlength=3).tolist() == [3, 3, 3]
    for c in range(3):  # within a class, the best-scored examples
        mine = (y == c).nonzero().flatten()
        best = mine[scores[mine].argsort(descending=True)[:3]]
        assert sorted(best.tolist()) == sorted(i for i in top.tolist() if y[i] == c)
    order = metrics.retraining.interleave_classes(
        torch.tensor([5, 0, 1, 4, 2, 3]), torch.tensor([0, 1, 1, 0, 0, 1])
    )
    assert order.tolist() == [0, 5, 4, 1, 3, 2]
    order = metrics.retraining.interleave_classes(
        torch.arange(6), torch.tensor([-1, -1, -1, 1, 1, 1])
    )  # any label values
    assert order.tolist() == [0, 3, 1, 4, 2, 5]
