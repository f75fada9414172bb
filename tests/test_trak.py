"""TRAK against a brute-force float64 evaluation of its formula, sign and ensemble tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdakit as tda
from tdakit.errors import TdakitError

D = torch.float64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models train much faster on one thread (and do not fight other processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n=30, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=D)
    y = (X[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=D) > 0).long() + (X[:, 1] > 1).long()
    return X, y.clamp_max(classes - 1)


def _model(seed, d=4, h=6, c=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c)).to(D)


def _train(model, X, y, steps=60, lr=0.5, indices=None):
    if indices is not None:
        X, y = X[indices], y[indices]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model.eval()


class FakeRecipe:
    """Duck-typed recipe: full-batch GD from an init seed; records its calls."""

    def __init__(self):
        self.calls = []

    def train(self, X, y, *, indices=None, init_seed=0, batch_seed=0):
        self.calls.append((None if indices is None else list(map(int, indices)), init_seed))
        return _train(_model(init_seed), X, y, indices=indices)


def dense_projection(projector, task):
    """The projector as an explicit [P, k] matrix (project the identity blockwise)."""
    params = task.params()
    P = sum(p.numel() for p in params.values())
    eye, blocks, i = torch.eye(P, dtype=D), {}, 0
    for n, p in params.items():
        blocks[n] = eye[:, i : i + p.numel()].reshape(P, *p.shape)
        i += p.numel()
    return projector.project(blocks)


def brute_trak(models, projections, X, y, Xq, yq, lam, relative=False):
    """Python loop of single-example autograd margin gradients, explicit inverse."""
    S = 0
    for model, R in zip(models, projections, strict=True):
        params = list(model.parameters())

        def margin_grad(x, t, model=model, params=params):
            o = model(x.unsqueeze(0))[0]
            others = torch.cat([o[:t], o[t + 1 :]])
            f = o[t] - torch.logsumexp(others, 0)
            return torch.cat([g.reshape(-1) for g in torch.autograd.grad(f, params)]), f

        train = [margin_grad(x, int(t)) for x, t in zip(X, y, strict=True)]
        Phi = torch.stack([g for g, _ in train]) @ R
        one_minus_p = 1 - torch.sigmoid(torch.stack([f for _, f in train]).detach())
        Phq = torch.stack([margin_grad(x, int(t))[0] for x, t in zip(Xq, yq, strict=True)]) @ R
        gram = Phi.T @ Phi
        K = gram + lam * (gram.diagonal().mean() if relative else 1) * torch.eye(len(gram), dtype=D)
        S = S + Phq @ torch.linalg.inv(K) @ Phi.T * one_minus_p[None, :]
    return S / len(models)


@pytest.fixture(scope="module")
def ensemble():
    X, y = _data()
    return X, y, [_train(_model(s), X, y) for s in range(24)]


@pytest.mark.parametrize(("M", "mode"), [(1, "absolute"), (2, "absolute"), (2, "relative")])
def test_equals_brute_force_formula(ensemble, M, mode):
    X, y, models = ensemble
    Xq, yq = _data(n=5, seed=9)
    task = tda.Task(_model(99))
    trak = tda.TRAK(
        task, checkpoints=models[:M], projection=16, damping=0.05, damping_mode=mode, seed=3
    )
    S = trak.fit((X, y)).scores((Xq, yq))
    R = [dense_projection(p, t) for p, t in zip(trak.projectors, trak.tasks, strict=True)]
    assert len({float(r.sum()) for r in R}) == M  # one projection per model
    want = brute_trak(models[:M], R, X, y, Xq, yq, 0.05, relative=mode == "relative")
    torch.testing.assert_close(S, want, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(trak.self_scores(), torch.diagonal(trak.scores((X, y))))
    _, val = trak.top_k((Xq, yq), k=3)
    torch.testing.assert_close(val, S.sort(1, descending=True).values[:, :3])


def test_large_damping_limit_is_grad_dot_of_margin(ensemble):
    """Sign check: with P = I / lambda, lambda * TRAK equals Grad-Dot on the margin."""
    X, y, models = ensemble
    Xq, yq = _data(n=4, seed=5)
    lam = 1e12
    task = tda.Task(models[0], measurement="margin")
    S = tda.TRAK(
        task, checkpoints=[models[0]], projection=None, damping=lam, damping_mode="absolute"
    ).fit((X, y))
    gd = tda.GradDot(task).fit((X, y)).scores((Xq, yq))
    torch.testing.assert_close(lam * S.scores((Xq, yq)), gd, rtol=1e-7, atol=1e-9 * gd.abs().max())


def test_duplicate_is_top_proponent():
    X, y = _data(n=40, seed=1)
    flipped = y.clone()
    flipped[:3] = (y[:3] + 1) % 3  # hard examples the model has to memorise
    Xd, yd = torch.cat([X, X[:3]]), torch.cat([flipped, flipped[:3]])
    models = [_train(_model(s, h=16), Xd, yd, steps=200) for s in range(2)]
    # k = 256 >= P = 131: the projection is injective, so this tests the sign and not
    # projection noise (with k = 64 < P the pair is top-2 for only some projection seeds).
    trak = tda.TRAK(tda.Task(models[0]), checkpoints=models, projection=256)
    idx, val = trak.fit((Xd, yd)).top_k((X[:3], flipped[:3]), k=2)
    for q in range(3):
        assert set(idx[q].tolist()) == {q, 40 + q}
    assert bool((val > 0).all())


def test_scores_converge_as_ensemble_grows(ensemble):
    """Correlation with an independent 16-model reference rises with M (seeded, fixed)."""
    X, y, models = ensemble
    Xq, yq = _data(n=6, seed=11)
    task = tda.Task(models[0])

    def scores(ms):
        return tda.TRAK(task, checkpoints=ms, projection=None).fit((X, y))

    ref = scores(models[8:]).scores((Xq, yq)).flatten()

    def corr(ms):
        s = scores(ms).scores((Xq, yq)).flatten()
        return float(torch.corrcoef(torch.stack([s, ref]))[0, 1])

    single = [corr([m]) for m in models[:8]]
    pairs = [corr(models[i : i + 2]) for i in range(0, 8, 2)]
    eight = corr(models[:8])
    assert max(single) < eight
    assert sum(single) / 8 + 0.05 < sum(pairs) / 4 < eight


def test_recipe_trains_seeded_models_and_halves():
    X, y = _data(n=20)
    Xq, yq = _data(n=3, seed=4)
    recipe = FakeRecipe()
    task = tda.Task(_model(0))
    trak = tda.TRAK(task, recipe=recipe, n_models=3, subset="half", seed=5, damping=0.1)
    S = trak.fit((X, y)).scores((Xq, yq))
    assert [c[1] for c in recipe.calls] == [5, 6, 7]
    halves = [c[0] for c in recipe.calls]
    assert all(len(h) == 10 and h == sorted(h) for h in halves) and halves[0] != halves[1]
    # the same models passed as checkpoints give the same scores
    ckpt = [
        _train(_model(s), X, y, indices=torch.tensor(h))
        for s, h in zip((5, 6, 7), halves, strict=True)
    ]
    S2 = tda.TRAK(task, checkpoints=ckpt, seed=5, damping=0.1).fit((X, y)).scores((Xq, yq))
    torch.testing.assert_close(S, S2)
    again = tda.TRAK(task, recipe=FakeRecipe(), n_models=3, subset="half", seed=5, damping=0.1)
    torch.testing.assert_close(again.fit((X, y)).scores((Xq, yq)), S)


def test_mse_uses_output_and_residual():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(D)
    g = torch.Generator().manual_seed(2)
    X, Y = torch.randn(15, 3, dtype=D, generator=g), torch.randn(15, 1, dtype=D, generator=g)
    task = tda.Task(model, loss="mse")
    S = tda.TRAK(
        task, checkpoints=[model], projection=None, damping=0.1, damping_mode="absolute"
    ).fit((X, Y))
    J = torch.stack(
        [
            torch.cat(
                [
                    p.reshape(-1)
                    for p in torch.autograd.grad(model(x[None])[0, 0], list(model.parameters()))
                ]
            )
            for x in X
        ]
    )
    r = (Y - model(X)).detach()[:, 0]
    want = J[:4] @ torch.linalg.inv(J.T @ J + 0.1 * torch.eye(J.shape[1], dtype=D)) @ J.T * r
    torch.testing.assert_close(S.scores((X[:4], Y[:4])), want, rtol=1e-8, atol=1e-10)


def test_clear_errors(ensemble):
    X, y, models = ensemble
    task = tda.Task(models[0])
    with pytest.raises(TdakitError, match="exactly one of checkpoints"):
        tda.TRAK(task)
    with pytest.raises(TdakitError, match="exactly one of checkpoints"):
        tda.TRAK(task, checkpoints=models[:1], recipe=FakeRecipe())
    with pytest.raises(TdakitError, match="empty list"):
        tda.TRAK(task, checkpoints=[])
    with pytest.raises(TdakitError, match="same architecture"):
        tda.TRAK(task, checkpoints=[nn.Linear(4, 3).to(D)])
    with pytest.raises(TdakitError, match="train"):
        tda.TRAK(task, recipe=object())
    with pytest.raises(TdakitError, match="damping_mode"):
        tda.TRAK(task, checkpoints=models[:1], damping_mode="auto")
    for bad in (-1.0, float("nan"), float("inf"), "0.1", True, None):
        with pytest.raises(TdakitError, match="damping"):
            tda.TRAK(task, checkpoints=models[:1], damping=bad)
    with pytest.raises(TdakitError, match="n_models"):
        tda.TRAK(task, recipe=FakeRecipe(), n_models=0)
    with pytest.raises(TdakitError, match="subset"):
        tda.TRAK(task, recipe=FakeRecipe(), subset="quarter")
    with pytest.raises(TdakitError, match="projection"):
        tda.TRAK(task, checkpoints=models[:1], projection=0)
    custom = tda.Task(models[0], loss=lambda o, t: (o - t.unsqueeze(1)).pow(2).sum(1))
    with pytest.raises(TdakitError, match="custom losses"):
        tda.TRAK(custom, checkpoints=models[:1])
    with pytest.raises(TdakitError, match="one model output"):
        mse = tda.Task(models[0], loss="mse")
        tda.TRAK(mse, checkpoints=models[:1]).fit((X, torch.randn(len(X), 3, dtype=D)))
    with pytest.raises(TdakitError, match="singular"):
        tda.TRAK(task, checkpoints=models[:1], projection=None, damping=0).fit((X[:5], y[:5]))
    with pytest.raises(TdakitError, match="not fitted"):
        tda.TRAK(task, checkpoints=models[:1]).scores((X, y))


def test_task_measurement_on_the_query_side(ensemble):
    """measurement='task' differentiates the task's query objective: with the loss, each
    query row is the margin row times (1 - p_q), since -grad loss = (1 - p) grad margin."""
    X, y, models = ensemble
    Xq, yq = _data(n=4, seed=6)
    one = dict(checkpoints=models[:1], projection=32, damping=0.05, damping_mode="absolute")
    m1 = tda.TRAK(tda.Task(models[0]), **one).fit((X, y)).scores((Xq, yq))
    l1 = tda.TRAK(tda.Task(models[0]), measurement="task", **one).fit((X, y)).scores((Xq, yq))
    p = models[0](Xq).softmax(1).gather(1, yq[:, None]).detach()
    torch.testing.assert_close(l1, m1 * (1 - p), rtol=1e-9, atol=1e-12)
