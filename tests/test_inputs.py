"""Per-example gradients on sequence layers and models vmap cannot run; dict batches."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import tdakit as tda
from conftest import tiny_data, tiny_mlp
from tdakit.features import per_example_grads
from test_grads import gradient_features, loop_grads

CE = nn.functional.cross_entropy
V, T, D, C = 13, 6, 8, 3  # vocabulary, sequence length, width, classes


class Sequence(nn.Module):
    """Token + position embeddings, LayerNorm on [B, T, D], a Linear on [B, T, D] sequences,
    mean pooling, LayerNorm on [B, D] and a Linear head.

    ``pos="broadcast"`` embeds positions as ``[1, T, D]``; ``pos="unbatched"`` as ``[T, D]``
    (nanoGPT style), whose first dimension equals the batch size when ``B == T``.
    """

    def __init__(self, pos: str = "broadcast", seed: int = 0) -> None:
        super().__init__()
        self.pos_mode = pos
        self.tok = nn.Embedding(V, D, padding_idx=0)
        self.pos = nn.Embedding(T, D)
        self.norm = nn.LayerNorm(D)
        self.mix = nn.Linear(D, D)
        self.out_norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, C)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
            self.tok.weight[0] = 0.0
        self.double()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        p = torch.arange(ids.shape[1], device=ids.device)
        pos = self.pos(p[None]) if self.pos_mode == "broadcast" else self.pos(p)
        h = torch.tanh(self.mix(self.norm(self.tok(ids) + pos)))
        return self.head(self.out_norm(h.mean(1)))


def token_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids with trailing padding (id 0) of varying length, and class labels."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (n, T), generator=gen)
    lengths = torch.randint(2, T + 1, (n,), generator=gen)
    ids[torch.arange(T)[None, :] >= lengths[:, None]] = 0
    return ids, torch.randint(0, C, (n,), generator=gen)


@pytest.mark.parametrize("batch_size", [5, 7, 32])
def test_embedding_layernorm_and_sequence_linear_use_the_layer_path(batch_size: int) -> None:
    model = Sequence()
    X, y = token_data(20)
    assert (X == 0).any() and (X[:, 1] != 0).all()
    task = tda.Task(model)
    G = gradient_features(task, X, y, batch_size=batch_size)
    assert task.gradient_paths == {"train": "layers"}
    ref = loop_grads(model, X, y, CE)
    assert G.shape == ref.shape == (20, task.num_params)
    torch.testing.assert_close(G, ref, rtol=1e-10, atol=1e-12)
    blocks = per_example_grads(task, X, y)
    assert list(blocks) == [n for n, _ in model.named_parameters()]
    assert (blocks["tok.weight"][:, 0] == 0).all()  # padding_idx gets no gradient
    assert (blocks["tok.weight"][:, 1:].abs().sum((1, 2)) > 0).all()
    flat = torch.cat([b.reshape(len(b), -1) for b in blocks.values()], 1)
    torch.testing.assert_close(flat, G, rtol=1e-10, atol=1e-12)  # blocks = feature columns


def test_selected_sequence_layers_and_query_objective() -> None:
    model = Sequence(seed=1)
    X, y = token_data(9, seed=1)
    task = tda.Task(model, params=["tok", "norm", "mix.weight"])
    G = gradient_features(task, X, y, objective="query", batch_size=4)
    assert task.gradient_paths == {"query": "layers"}
    ref = loop_grads(model, X, y, CE)
    named = [n for n, _ in model.named_parameters()]
    widths = [p.numel() for p in model.parameters()]
    offsets = torch.tensor([0, *widths]).cumsum(0).tolist()
    cols = [
        torch.arange(offsets[i], offsets[i + 1])
        for i, n in enumerate(named)
        if n in task.param_names
    ]
    torch.testing.assert_close(G, ref[:, torch.cat(cols)], rtol=1e-10, atol=1e-12)


def test_unbatched_position_embedding_with_batch_equal_to_length_is_not_per_example() -> None:
    """``pos(arange(T))`` is ``[T, D]``; with ``B == T`` its rows look like examples but
    every example uses all of them: the layer path must notice and hand over to vmap."""
    model = Sequence(pos="unbatched", seed=2)
    X, y = token_data(2 * T, seed=2)
    task = tda.Task(model)
    G = gradient_features(task, X, y, batch_size=T)
    assert task.gradient_paths == {"train": "vmap"}
    torch.testing.assert_close(G, loop_grads(model, X, y, CE), rtol=1e-10, atol=1e-12)
    broadcast = Sequence(pos="broadcast", seed=2)
    task = tda.Task(broadcast)
    G = gradient_features(task, X, y, batch_size=T)
    assert task.gradient_paths == {"train": "layers"}
    torch.testing.assert_close(G, loop_grads(broadcast, X, y, CE), rtol=1e-10, atol=1e-12)


class Branchy(nn.Module):
    """Data-dependent control flow (vmap cannot run it) and a parameter outside any
    supported layer (so the layer path does not apply either)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 7), nn.Linear(7, 3)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 7))
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc1(x)) * self.gain
        if x.sum() > 0:
            h = h * h
        return self.fc2(h)


def test_data_dependent_control_flow_falls_back_to_the_loop() -> None:
    model = Branchy()
    X, y = tiny_data(n=30)
    Xq, yq = tiny_data(n=6, seed=9)
    assert (X.sum(1) > 0).any() and (X.sum(1) < 0).any()  # both branches are taken
    task = tda.Task(model)
    with pytest.warns(RuntimeWarning, match="vmap cannot run this model") as record:
        G = gradient_features(task, X, y, batch_size=7)
    assert task.gradient_paths == {"train": "loop"}
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1  # once
    ref = loop_grads(model, X, y, CE)
    torch.testing.assert_close(G, ref, rtol=1e-10, atol=1e-12)

    task = tda.Task(model)
    with pytest.warns(RuntimeWarning, match="vmap cannot run this model") as record:
        S = tda.GradDot(task, batch_size=7).fit((X, y)).scores((Xq, yq))
    assert task.gradient_paths == {"train": "loop", "query": "loop"}
    said = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert len(said) == 2 and "train gradients" in said[0] and "query gradients" in said[1]
    torch.testing.assert_close(S, loop_grads(model, Xq, yq, CE) @ ref.T, rtol=1e-10, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the path is decided: no further warning
        gradient_features(task, X, y, batch_size=7)


class DictData(Dataset):
    """Hugging Face style examples: ``{"x": features, "labels": class}``."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor) -> None:
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.X[i], "labels": self.y[i]}


class Net(nn.Module):
    """``forward(x)``: dict batches call the model with keyword ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_dict_dataset_and_dataloader_give_the_tuple_scores() -> None:
    """The same numbers (to the last bits: BLAS rounding may depend on operand alignment
    and block shape) from tuples, a dict Dataset and a DataLoader, whatever the batches."""
    X, y = tiny_data(n=30)
    Xq, yq = tiny_data(n=6, seed=9)
    task = tda.Task(Net())
    ref = tda.GradDot(task, batch_size=7).fit((X, y))
    S = ref.scores((Xq, yq))
    one_batch = tda.GradDot(task).fit((X, y)).scores((Xq, yq))
    torch.testing.assert_close(S, one_batch, rtol=1e-12, atol=1e-14)
    loader = DataLoader(DictData(X, y), batch_size=7, shuffle=False)
    via_ds = tda.GradDot(task, batch_size=7).fit(DictData(X, y))
    via_dl = tda.GradDot(task, batch_size=7).fit(loader)
    close = functools.partial(torch.testing.assert_close, rtol=1e-13, atol=1e-14)
    close(tda.GradDot(task).fit(DictData(X, y)).scores(DictData(Xq, yq)), one_batch)
    for method in (via_ds, via_dl):
        for queries in (
            DictData(Xq, yq),
            DataLoader(DictData(Xq, yq), batch_size=7, shuffle=False),
            (Xq, yq),
        ):
            close(method.scores(queries), S)
        close(method.self_scores(), ref.self_scores())
        idx, val = method.top_k(DictData(Xq, yq), k=4)
        ref_idx, ref_val = ref.top_k((Xq, yq), k=4)
        assert torch.equal(idx, ref_idx)
        close(val, ref_val)
    assert task.gradient_paths == {"train": "layers", "query": "layers"}


def test_in_place_activation_after_a_layer_keeps_gradients_exact():
    """nn.ReLU(inplace=True) after a Linear must not corrupt the recorded layer output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3)).double()
    X = torch.randn(20, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    task = tda.Task(model)
    S = tda.GradDot(task).fit((X, y)).scores((X, y))
    assert task.gradient_paths["train"] == "layers"
    rows = []
    for i in range(20):
        loss = torch.nn.functional.cross_entropy(model(X[i : i + 1]), y[i : i + 1])
        rows.append(
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
        )
    G = torch.stack(rows)
    torch.testing.assert_close(S, G @ G.T, rtol=1e-10, atol=1e-12)
