"""K-FAC / EK-FAC against brute-force float64 references (explicit GGN via jacrev)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import hessian, jacrev, vmap

import tdakit as tda
from tdakit.data.sources import as_source
from tdakit.errors import ConfigError, NotFittedError, NumericalError
from tdakit.preconditioners import EKFAC, KFAC, Curvature

D = torch.float64


def fit(task, X, y, damping=0.1, ekfac=False, batch_size=128, kind="ggn"):
    solver = EKFAC() if ekfac else KFAC()
    return solver.fit(Curvature(task, as_source((X, y)), kind, damping, batch_size=batch_size))


def _data(n=12, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=D), torch.randint(0, classes, (n,), generator=g)


def _mlp(seed=0, inplace=False, d=4, h=5, c=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(inplace=inplace), nn.Linear(h, c)).to(D)


def exact_ggn(task, X, y):
    """(1/N) sum_i J_i^T Lambda_i J_i over the attributed parameters, flat order."""
    params = task.params()
    shapes = {n: p.shape for n, p in params.items()}
    flat0 = torch.cat([p.reshape(-1) for p in params.values()])

    def unflatten(flat):
        out, i = {}, 0
        for n, s in shapes.items():
            out[n] = flat[i : i + s.numel()].reshape(s)
            i += s.numel()
        return out

    def out_fn(flat, x):
        return task.outputs(unflatten(flat), x.unsqueeze(0))[0].reshape(-1)

    J = vmap(jacrev(out_fn), in_dims=(None, 0))(flat0, X)
    outs = task.outputs(params, X)
    shape = outs.shape[1:]
    lam = vmap(hessian(lambda o, t: task._loss(o.reshape(1, *shape), t.unsqueeze(0))[0]))(
        outs.reshape(len(X), -1), y
    )
    return torch.einsum("ncp,ncd,ndq->pq", J, lam, J) / len(X)


def layer_index(layer):
    """Flat indices of a layer's [out, in(+1)] matrix, row-major (an Embedding's
    [vocab, dim] weight is the transpose; a LayerNorm's are its weight then bias)."""
    if layer.kind == "diagonal":
        return torch.cat([torch.arange(*s) for s in layer.slots()])
    out = layer.out_features
    if layer.kind == "embedding":
        return torch.arange(*layer.weight).reshape(-1, out).T.reshape(-1)
    cols = []
    if layer.weight is not None:
        a, b = layer.weight
        cols.append(torch.arange(a, b).reshape(out, -1))
    if layer.bias is not None:
        cols.append(torch.arange(*layer.bias).reshape(out, 1))
    return torch.cat(cols, 1).reshape(-1)


def block(M, layer):
    """The layer's diagonal block of a [P, P] matrix, in layer_index order."""
    idx = layer_index(layer)
    return M[idx[:, None], idx[None, :]]


def dense_kfac(k):
    """The dense block-diagonal curvature that K-FAC/EK-FAC represent."""
    M = torch.zeros(k.num_params, k.num_params, dtype=D)
    for layer in k.layers_:
        idx = layer_index(layer)
        Q = basis(layer)
        M[idx[:, None], idx[None, :]] = Q @ torch.diag(layer.eigenvalues.reshape(-1)) @ Q.T
    return M


def basis(layer):
    """The Kronecker eigenbasis QG (x) QA (QA = I for embeddings, I for LayerNorm)."""
    if layer.kind == "diagonal":
        return torch.eye(layer.eigenvalues.numel(), dtype=D)
    QA = torch.eye(len(layer.A), dtype=D) if layer.QA is None else layer.QA
    return torch.kron(layer.QG.contiguous(), QA.contiguous())


def exact_basis_diagonal(ggn, layer):
    """diag(Q^T GGN_block Q): what EK-FAC's eigenvalues must be."""
    Q = basis(layer)
    return torch.diagonal(Q.T @ block(ggn, layer) @ Q).reshape(layer.eigenvalues.shape)


def dense_solve(k, V, lam):
    """(dense K-FAC matrix + lam I)^{-1} on the rows of V."""
    return torch.linalg.solve(dense_kfac(k) + lam * torch.eye(len(V.T), dtype=D), V.T).T


def test_factors_match_per_example_brute_force():
    model = _mlp(inplace=True)
    X, y = _data()
    k = fit(tda.Task(model), X, y, damping=0.1, batch_size=5)
    first, last = k.layers_
    W1, b1, W2 = model[0].weight, model[0].bias, model[2].weight
    A1 = torch.zeros(5, 5, dtype=D)
    A2 = torch.zeros(6, 6, dtype=D)
    G1 = torch.zeros(5, 5, dtype=D)
    G2 = torch.zeros(3, 3, dtype=D)
    for x in X:  # the GGN of cross-entropy does not depend on the labels
        s1 = W1 @ x + b1
        h = torch.relu(s1)
        o = model(x.unsqueeze(0))[0].detach()
        lam = torch.diag(o.softmax(0)) - torch.outer(o.softmax(0), o.softmax(0))
        a1, a2 = torch.cat([x, torch.ones(1, dtype=D)]), torch.cat([h, torch.ones(1, dtype=D)])
        A1 += torch.outer(a1, a1)
        A2 += torch.outer(a2, a2)
        Js = (W2 * (s1 > 0)).detach()  # d output / d s1
        G1 += Js.T @ lam @ Js
        G2 += lam
    n = len(X)
    for got, want in [(first.A, A1), (last.A, A2), (first.G, G1), (last.G, G2)]:
        torch.testing.assert_close(got, (want / n).detach(), rtol=1e-10, atol=1e-12)


def test_single_example_single_linear_layer_is_exact_ggn():
    torch.manual_seed(1)
    model = nn.Linear(4, 3).to(D)
    X, y = _data(n=1)
    task = tda.Task(model)
    k = fit(task, X, y, damping=0.1)
    (layer,) = k.layers_
    exact = block(exact_ggn(task, X, y), layer)
    torch.testing.assert_close(torch.kron(layer.G, layer.A), exact, rtol=1e-10, atol=1e-12)
    # with two examples the Kronecker product of means is no longer the mean of products
    X2, y2 = _data(n=2)
    k2 = fit(task, X2, y2, damping=0.1)
    l2 = k2.layers_[0]
    err = (torch.kron(l2.G, l2.A) - block(exact_ggn(task, X2, y2), layer)).norm()
    assert err > 1e-3


@pytest.mark.parametrize("eigen_correction", [False, True])
def test_apply_equals_dense_damped_inverse(eigen_correction):
    model = _mlp()
    X, y = _data()
    task = tda.Task(model)
    k = fit(task, X, y, damping=0.05, ekfac=eigen_correction)
    assert type(k) is (EKFAC if eigen_correction else KFAC)
    # the represented matrix is the Kronecker product of the factors (K-FAC)
    if not eigen_correction:
        for layer in k.layers_:
            Q = torch.kron(layer.QG, layer.QA)
            dense = Q @ torch.diag(layer.eigenvalues.reshape(-1)) @ Q.T
            torch.testing.assert_close(dense, torch.kron(layer.G, layer.A), atol=1e-12, rtol=0)
    V = torch.randn(7, task.num_params, dtype=D, generator=torch.Generator().manual_seed(3))
    want = dense_solve(k, V, 0.05)
    torch.testing.assert_close(k.apply(V), want, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(k.apply(V[:1]), want[:1], rtol=1e-9, atol=1e-10)
    P = task.num_params
    with pytest.raises(ConfigError, match=rf"rows of length {P}.*got shape \({P},\)"):
        k.apply(V[0])  # rows [n, P] only


def test_ekfac_eigenvalues_are_exact_ggn_diagonal_in_kronecker_basis():
    model = _mlp(seed=2)
    X, y = _data(seed=2)
    task = tda.Task(model)
    ek = fit(task, X, y, damping=0.1, ekfac=True, batch_size=4)
    ggn = exact_ggn(task, X, y)
    for layer in ek.layers_:
        want = exact_basis_diagonal(ggn, layer)
        torch.testing.assert_close(layer.eigenvalues, want, rtol=1e-9, atol=1e-12)


def test_ekfac_closer_to_exact_ggn_than_kfac():
    """EK-FAC is the best diagonal in K-FAC's Kronecker eigenbasis, so its matrix is closer
    (Frobenius) to the layer-diagonal blocks of the exact GGN than K-FAC's. (Errors from
    the ignored cross-layer blocks and influence-score errors are not systematically lower
    on tiny MLPs; see docs/trak-kfac-representer.md.)"""
    for seed in range(3):
        model = _mlp(seed=seed, d=5, h=6, c=4)
        X, y = _data(n=40, d=5, classes=4, seed=seed)
        task = tda.Task(model)
        ggn = exact_ggn(task, X, y)
        kfac, ekfac = (fit(task, X, y, damping=0.01, ekfac=ec) for ec in (False, True))
        blocks = torch.zeros_like(ggn)
        for layer in kfac.layers_:
            idx = layer_index(layer)
            blocks[idx[:, None], idx[None, :]] = ggn[idx[:, None], idx[None, :]]
        err_k, err_ek = ((dense_kfac(k) - blocks).norm() for k in (kfac, ekfac))
        assert err_ek < err_k
        # Pythagoras in the eigenbasis: EK-FAC removes exactly the diagonal part of the error
        diag_gap = sum(
            (a.eigenvalues - b.eigenvalues).pow(2).sum()
            for a, b in zip(kfac.layers_, ekfac.layers_, strict=True)
        )
        torch.testing.assert_close(err_k**2 - err_ek**2, diag_gap, rtol=1e-8, atol=1e-14)
        assert diag_gap > 1e-6


def test_conv2d_factors_and_ekfac_against_brute_force():
    torch.manual_seed(5)
    conv = nn.Conv2d(2, 3, kernel_size=3, padding=1, stride=2).to(D)
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4).to(D))
    g = torch.Generator().manual_seed(5)
    X = torch.randn(6, 2, 5, 5, dtype=D, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    task = tda.Task(model, params=["0"])
    k = fit(task, X, y, damping=0.1, ekfac=True)
    (layer,) = k.layers_
    A = torch.zeros(19, 19, dtype=D)
    G = torch.zeros(3, 3, dtype=D)
    xp = nn.functional.pad(X, (1, 1, 1, 1))
    for i in range(len(X)):
        s = conv(X[i : i + 1]).detach()
        o = model(X[i : i + 1])[0].detach()
        p = o.softmax(0)
        lam = torch.diag(p) - torch.outer(p, p)
        Js = torch.autograd.functional.jacobian(lambda s: model[1:](s)[0], s)[:, 0]  # [4,3,3,3]
        for r in range(3):
            for c in range(3):
                patch = xp[i, :, 2 * r : 2 * r + 3, 2 * c : 2 * c + 3].reshape(-1)
                a = torch.cat([patch, torch.ones(1, dtype=D)])
                A += torch.outer(a, a) / 9
                J = Js[:, :, r, c]
                G += J.T @ lam @ J
    torch.testing.assert_close(layer.A, A / len(X), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.G, G / len(X), rtol=1e-10, atol=1e-12)
    want = exact_basis_diagonal(exact_ggn(task, X, y), layer)
    torch.testing.assert_close(layer.eigenvalues, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("params", [["0.weight"], ["0.bias"], ["2.weight", "0.bias"]])
def test_partially_selected_layers(params):
    model = _mlp(seed=6)
    X, y = _data(n=1, seed=6)
    task = tda.Task(model, params=params, loss="cross_entropy")
    k = fit(task, X, y, damping=0.2)
    # one example: every layer block is exact
    ggn = exact_ggn(task, X, y)
    dense = dense_kfac(k)
    for layer in k.layers_:
        torch.testing.assert_close(block(dense, layer), block(ggn, layer), atol=1e-10, rtol=0)


def test_mse_curvature_is_gauss_newton():
    model = _mlp(seed=7, c=2)
    X, _ = _data(n=1, seed=7)
    Y = torch.randn(1, 2, dtype=D)
    task = tda.Task(model, loss="mse")
    k = fit(task, X, Y, damping=0.1, ekfac=True)
    torch.testing.assert_close(k.layers_[1].G, torch.eye(2, dtype=D), atol=1e-12, rtol=0)
    ggn = exact_ggn(task, X, Y)
    for layer in k.layers_:
        torch.testing.assert_close(
            block(dense_kfac(k), layer), block(ggn, layer), atol=1e-10, rtol=0
        )


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(torch.tanh(self.lin(x)))


class _Raw(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x) * self.scale


def test_clear_errors():
    X3, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    y2 = torch.tensor([0, 1, 0, 1])
    bn = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(2, 2))
    emb = nn.Sequential(nn.Embedding(5, 4, max_norm=1.0), nn.Linear(4, 3))
    for model, X, Y, msg in [
        (bn, torch.randn(4, 4), y, r"'1\.weight'.*BatchNorm1d.*params="),
        (_Raw(), X3, y, "'scale'.*the model itself"),
        (_Shared(), X3, y, r"exactly once per forward pass.*params="),
        (grouped, torch.randn(4, 2, 3, 3), y2, "groups=1"),
        (emb, torch.tensor([0, 1, 2, 3]), y, "max_norm"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            fit(tda.Task(model), X, Y)
    fit(tda.Task(_Raw(), params=["lin"]), X3, y)  # restricting works
    lin = tda.Task(nn.Linear(3, 2))
    for bad in (-1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ConfigError, match="damping"):
            fit(lin, X3, y2, damping=bad)
    for kind in ("hessian", "fisher"):
        with pytest.raises(ConfigError, match="curvature"):
            fit(lin, X3, y2, kind=kind)
    # damping 0 is allowed, but 2-class cross-entropy has a rank-1 G: nothing to invert
    with pytest.raises(NumericalError, match=r"'' has \(numerically\) zero.*damping > 0"):
        fit(lin, X3, y2, damping=0.0).apply(torch.zeros(1, 8))
    k = KFAC()
    with pytest.raises(NotFittedError, match="not fitted"):
        k.apply(torch.zeros(1, 8))
    k.fit(Curvature(lin, as_source((X3, y2)), "ggn", 0.1))
    for bad in (torch.zeros(2, 7), torch.zeros(8)):
        with pytest.raises(ConfigError, match="length 8"):
            k.apply(bad)
    with pytest.raises(ConfigError, match="compute_dtype"):
        KFAC(compute_dtype="float16")


def test_embedding_kfac_is_the_exact_full_rank_ggn_block_for_a_linear_mse_head():
    """Emb -> Linear with MSE: the embedding's GGN block is exactly (W2^T W2) (x)
    diag(token frequencies), full rank; K-FAC and EK-FAC represent it exactly."""
    torch.manual_seed(10)
    model = nn.Sequential(nn.Embedding(5, 2), nn.Linear(2, 3)).to(D)
    ids = torch.tensor([0, 1, 2, 3, 4, 0, 0, 2, 4, 4, 1, 3])
    Y = torch.randn(len(ids), 3, dtype=D, generator=torch.Generator().manual_seed(10))
    task = tda.Task(model, loss="mse", params=["0"])
    exact = exact_ggn(task, ids, Y)
    assert float(torch.linalg.eigvalsh(exact)[0]) > 1e-3  # full rank
    V = torch.randn(4, task.num_params, dtype=D, generator=torch.Generator().manual_seed(1))
    want = torch.linalg.solve(exact + 0.05 * torch.eye(len(exact), dtype=D), V.T).T
    freq = torch.bincount(ids, minlength=5).to(D) / len(ids)
    for ekfac in (False, True):
        k = fit(task, ids, Y, damping=0.05, ekfac=ekfac)
        (layer,) = k.layers_
        assert layer.kind == "embedding" and layer.QA is None
        torch.testing.assert_close(layer.A, freq, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(dense_kfac(k), exact, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(k.apply(V), want, rtol=1e-9, atol=1e-11)
        # undamped: the explicit Kronecker inverse G^{-1} (x) diag(1 / A), [dim, vocab] order
        Kinv = torch.kron(layer.G.inverse().contiguous(), torch.diag(1 / freq))
        idx = layer_index(layer)
        got = fit(task, ids, Y, damping=0.0, ekfac=ekfac).apply(V)
        torch.testing.assert_close(got[:, idx], V[:, idx] @ Kinv.T)


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_sequences_ekfac_eigenvalues_and_apply(padding_idx):
    torch.manual_seed(11)
    emb = nn.Embedding(6, 3, padding_idx=padding_idx)  # 4 tokens per example
    model = nn.Sequential(emb, nn.Tanh(), nn.Flatten(), nn.Linear(12, 3)).to(D)
    g = torch.Generator().manual_seed(11)
    ids, y = torch.randint(0, 6, (9, 4), generator=g), torch.randint(0, 3, (9,), generator=g)
    ids[0] = torch.tensor([2, 2, 5, 2])  # repeated tokens in one example
    task = tda.Task(model)
    ggn = exact_ggn(task, ids, y)
    kfac, ek = (fit(task, ids, y, damping=0.05, ekfac=e, batch_size=4) for e in (False, True))
    emb = ek.layers_[0]
    counts = torch.stack([torch.bincount(row, minlength=6) for row in ids]).to(D)
    torch.testing.assert_close(emb.A, counts.mean(0) / 4, rtol=1e-12, atol=1e-14)
    for layer in ek.layers_:
        want = exact_basis_diagonal(ggn, layer)
        torch.testing.assert_close(layer.eigenvalues, want, rtol=1e-9, atol=1e-12)
    if padding_idx is not None:  # the padding row never gets a gradient
        assert float(emb.eigenvalues[:, padding_idx].abs().max()) == 0.0
    V = torch.randn(5, task.num_params, dtype=D, generator=torch.Generator().manual_seed(2))
    for k in (kfac, ek):
        torch.testing.assert_close(k.apply(V), dense_solve(k, V, 0.05), rtol=1e-9, atol=1e-10)
    err_k, err_ek = ((block(dense_kfac(k), emb) - block(ggn, emb)).norm() for k in (kfac, ek))
    assert err_ek < err_k  # EK-FAC: the best diagonal in the same basis


@pytest.mark.parametrize(
    ("shape", "bias"), [((10, 4), True), ((8, 3, 4), True), ((8, 3, 4), False)]
)
def test_layernorm_gets_the_exact_ggn_diagonal(shape, bias):
    torch.manual_seed(12)
    T = 1 if len(shape) == 2 else shape[1]  # [B, 4] or positions [B, T, 4]
    norm = nn.LayerNorm(5, bias=bias)
    model = nn.Sequential(nn.Linear(4, 5), norm, nn.Tanh(), nn.Flatten(), nn.Linear(5 * T, 3))
    model = model.to(D)
    with torch.no_grad():  # away from the default weight 1, bias 0
        for p in norm.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(12)
    X, y = torch.randn(*shape, dtype=D, generator=g), torch.randint(0, 3, (shape[0],), generator=g)
    task = tda.Task(model)
    diag = exact_ggn(task, X, y).diagonal()
    V = torch.randn(3, task.num_params, dtype=D, generator=torch.Generator().manual_seed(4))
    for ekfac in (False, True):
        k = fit(task, X, y, damping=0.02, ekfac=ekfac, batch_size=3)
        layer = k.layers_[1]
        idx = layer_index(layer)
        assert layer.kind == "diagonal" and len(idx) == (10 if bias else 5)
        torch.testing.assert_close(layer.eigenvalues, diag[idx], rtol=1e-9, atol=1e-13)
        out = k.apply(V)
        torch.testing.assert_close(out[:, idx], V[:, idx] / (diag[idx] + 0.02))
        torch.testing.assert_close(out, dense_solve(k, V, 0.02), rtol=1e-9, atol=1e-10)


def test_float32_model_and_lenet_style_network():
    torch.manual_seed(8)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3)
    )
    X = torch.randn(10, 1, 4, 4)
    y = torch.randint(0, 3, (10,))
    task = tda.Task(model)
    k = fit(task, X, y, damping=1e-2, ekfac=True, batch_size=3)
    V = torch.randn(4, task.num_params)
    out = k.apply(V)
    assert out.dtype == torch.float32 and out.shape == V.shape
    # the damped inverse is positive definite: v^T (F + lambda)^-1 v > 0
    assert bool(((out * V).sum(1) > 0).all())


@pytest.mark.parametrize(
    ("k", "d", "s", "p"), [(3, 1, 1, 1), ((3, 2), (2, 1), (2, 3), 0), (2, 2, 1, "same")]
)
def test_conv_patches_match_unfold(k, d, s, p):
    from tdakit.features.layers import conv_patches

    conv = nn.Conv2d(2, 3, k, dilation=d, stride=s, padding=p)
    x = torch.randn(4, 2, 9, 8)
    xp = nn.functional.pad(x, conv._reversed_padding_repeated_twice)
    want = nn.functional.unfold(xp, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
    got = conv_patches(x, conv)  # pads itself
    torch.testing.assert_close(got, want.transpose(1, 2), rtol=0, atol=0)
    # and the patches reproduce the convolution itself
    out = got @ conv.weight.reshape(3, -1).T + conv.bias
    torch.testing.assert_close(out.transpose(1, 2).reshape(conv(x).shape), conv(x))
