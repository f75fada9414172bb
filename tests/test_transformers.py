"""A tiny Hugging Face BERT (built from a config, no download) with padding masks, fed as a
Dataset of dicts, runs through Grad-Dot, TracIn, TRAK, CG and EK-FAC; checked in float64
against per-example gradients of the unpadded sequences."""

from __future__ import annotations

import warnings

import pytest
import torch

import tdakit as tda
from tdakit.data.sources import as_source
from tdakit.preconditioners.operators import CurvatureOperator

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra")

N, T, VOCAB = 16, 9, 30


def tiny_bert() -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=T,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).double().eval()


class Texts(torch.utils.data.Dataset):
    """Token ids padded with 0 after each sequence's length, an attention mask, labels."""

    def __init__(self, seed: int = 1, pad_id: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.lengths = torch.randint(3, T + 1, (N,), generator=g)
        self.mask = (torch.arange(T)[None] < self.lengths[:, None]).long()
        ids = torch.randint(1, VOCAB, (N, T), generator=g)
        self.ids = torch.where(self.mask.bool(), ids, torch.full_like(ids, pad_id))
        self.labels = torch.randint(0, 3, (N,), generator=g)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def reference_grads(model, data: Texts, measure=None) -> torch.Tensor:
    """Per-example gradients from one unpadded sequence at a time (plain autograd)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(N):
        L = int(data.lengths[i])
        logits = model(input_ids=data.ids[i : i + 1, :L]).logits
        y = data.labels[i : i + 1]
        value = (measure or torch.nn.functional.cross_entropy)(logits, y).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)]))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def bert():
    return tiny_bert()


def test_grad_dot_and_tracin_equal_unpadded_per_example_gradients(bert):
    data = Texts()
    task = tda.Task(bert)  # dict batches: labels under "labels", outputs with .logits
    method = tda.GradDot(task, batch_size=5).fit(data)
    G = reference_grads(bert, data)
    S = method.scores(data)
    torch.testing.assert_close(S, G @ G.T, rtol=1e-10, atol=1e-12)
    assert method.gradient_path == {"train": "layers", "query": "layers"}
    tracin = tda.TracIn(task, [bert.state_dict()] * 2, [0.1, 0.3], batch_size=5).fit(data)
    torch.testing.assert_close(tracin.scores(data), 0.4 * (G @ G.T), rtol=1e-10, atol=1e-12)
    per_model = torch.zeros(2, N, N, dtype=torch.float64)
    for b in tracin.iter_blocks(data, per_model=True):
        per_model[:, b.q0 : b.q1, b.t0 : b.t1] = b.values
    torch.testing.assert_close(per_model[1], 0.3 * (G @ G.T), rtol=1e-10, atol=1e-12)


def test_trak_matches_brute_force_on_the_head(bert):
    data = Texts()
    head = ["bert.pooler.dense", "classifier"]
    task = tda.Task(bert, params=head)
    trak = tda.TRAK(task, checkpoints=[bert], projection=None, damping=0.05, batch_size=4)
    S = trak.fit(data).scores(data)
    # brute force: phi = grad of the margin of the head parameters, p = prob of the label
    for name, p in bert.named_parameters():
        p.requires_grad_(any(name.startswith(h) for h in head))
    try:
        margin = lambda z, y: tda.losses.negative_margin(z, y)  # noqa: E731
        Phi = reference_grads(bert, data, measure=margin)  # grad of -margin
    finally:
        for p in bert.parameters():
            p.requires_grad_(True)
    with torch.no_grad():
        logits = bert(input_ids=data.ids, attention_mask=data.mask).logits
    p_true = logits.softmax(1).gather(1, data.labels[:, None]).squeeze(1)
    gram = Phi.T @ Phi
    lam = 0.05 * gram.diagonal().mean()
    K = Phi @ torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), Phi.T)
    torch.testing.assert_close(S, K * (1 - p_true)[None], rtol=1e-7, atol=1e-10)


def test_cg_matches_exact_ggn_influence_and_ekfac_runs(bert):
    data = Texts()
    task = tda.Task(bert)
    cg = tda.solvers.CG(tol=1e-12, max_iter=2000)
    S_cg = tda.InfluenceFunction(task, solver=cg, damping=0.05, batch_size=6).fit(data).scores(data)
    op = CurvatureOperator(task, as_source(data), "ggn", batch_size=6)
    ggn = op.matrix(max_params=op.num_params)
    G = reference_grads(bert, data)
    ref = G @ torch.linalg.solve(ggn + 0.05 * torch.eye(len(ggn), dtype=ggn.dtype), G.T) / N
    torch.testing.assert_close(S_cg, ref, rtol=1e-6, atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warnings: the layer path handles BERT
        ekfac = tda.InfluenceFunction(task, solver="ekfac", damping=0.05, batch_size=6)
        S_ek = ekfac.fit(data).scores(data)
    assert torch.isfinite(S_ek).all()
    rho = torch.corrcoef(torch.stack([S_ek.flatten(), ref.flatten()]))[0, 1]
    assert rho > 0.9, rho  # an approximation of the same matrix, not a different one


def test_padding_is_ignored(bert):
    task = tda.Task(bert)
    a, b = Texts(pad_id=0), Texts(pad_id=7)  # same sequences, other ids under the mask
    assert not torch.equal(a.ids, b.ids)
    Sa = tda.GradDot(task, batch_size=8).fit(a).scores(a)
    Sb = tda.GradDot(task, batch_size=8).fit(b).scores(b)
    torch.testing.assert_close(Sa, Sb, rtol=1e-10, atol=1e-12)


def test_vmap_cannot_run_bert_but_the_loop_path_agrees(bert):
    """Attributing only the attention output LayerNorm and the pooler keeps the layer path;
    a parameter outside the supported layers forces vmap, which BERT's mask checks break,
    so the loop path takes over with a warning and the same numbers."""

    class Scaled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.temperature = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits / (
                self.temperature
            )

    model = Scaled(bert)
    data = Texts()
    task = tda.Task(model, params=["temperature", "inner.classifier"])
    with pytest.warns(RuntimeWarning, match="one backward pass per example"):
        S = tda.GradDot(task, batch_size=8).fit(data).scores(data)
    assert task.gradient_paths["train"] == "loop"
    rows = []
    for i in range(N):
        L = int(data.lengths[i])
        out = model(data.ids[i : i + 1, :L], data.mask[i : i + 1, :L])
        loss = torch.nn.functional.cross_entropy(out, data.labels[i : i + 1])
        params = [model.temperature, *model.inner.classifier.parameters()]
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    G = torch.stack(rows)
    torch.testing.assert_close(S, G @ G.T, rtol=1e-10, atol=1e-12)
