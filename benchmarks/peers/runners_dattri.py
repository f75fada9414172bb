"""dattri (0.3) runners. dattri returns ``[n_train, n_test]`` with ``g_train . M g_test``,
positive = helpful (the same orientation as tdakit); influence scores carry no 1/N and its
``regularization`` is added to the Hessian of the loss its loss function returns -- the
MEAN over the one full batch we give it -- so it equals tdakit's λ."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import Case  # type: ignore[import-not-found]
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

# EK-FAC estimates its Fisher from the task's target function, which also gives the query
# gradients: labels are sampled from the model only while the factors are being fitted.
_SAMPLING = {"on": False, "gen": None}


def _batched(case: Case, x: torch.Tensor, t: torch.Tensor):
    if x.ndim == case.X.ndim - 1:  # a single example (dattri vmaps over examples)
        return x.unsqueeze(0), t.unsqueeze(0)
    return x, t


def _losses(case: Case):
    model = case.model

    def loss(params, data):
        x, t = _batched(case, *data)
        return F.cross_entropy(functional_call(model, params, x), t.long())

    def sampled_loss(params, data):
        x, t = _batched(case, *data)
        out = functional_call(model, params, x)
        if _SAMPLING["on"]:
            with torch.no_grad():
                t = torch.multinomial(F.softmax(out, 1), 1, generator=_SAMPLING["gen"])[:, 0]
        return F.cross_entropy(out, t.long())

    def margin(params, data):
        x, t = _batched(case, *data)
        out = functional_call(model, params, x)
        correct = out.gather(1, t.long().view(-1, 1)).squeeze(1)
        others = out.scatter(1, t.long().view(-1, 1), float("-inf"))
        return (correct - torch.logsumexp(others, 1)).sum()

    def correct_probability(params, data):
        x, t = _batched(case, *data)
        out = functional_call(model, params, x)
        return F.softmax(out, 1).gather(1, t.long().view(-1, 1)).squeeze(1).sum()

    return loss, sampled_loss, margin, correct_probability


def _loaders(case: Case, train_batch: int | None = None, test_batch: int | None = None):
    train = DataLoader(
        TensorDataset(case.X, case.y), batch_size=train_batch or case.n_train, shuffle=False
    )
    test = DataLoader(
        TensorDataset(case.Xq, case.yq), batch_size=test_batch or len(case.Xq), shuffle=False
    )
    return train, test


def run(
    case: Case,
    method: str,
    last_layer: bool = False,
    train_batch: int | None = None,
    test_batch: int | None = None,
    **kw,
):
    from dattri import algorithm as A
    from dattri.task import AttributionTask

    loss, sampled_loss, margin, correct_probability = _losses(case)
    state = case.model.state_dict()
    layer = case.last_layer if last_layer else None
    train, test = _loaders(case, train_batch, test_batch)
    lam = case.lam
    if method == "tracin":
        task = AttributionTask(loss_func=loss, model=case.model, checkpoints=state)
        att = A.TracInAttributor(task, weight_list=torch.ones(1), normalized_grad=False)
        return att.attribute(train, test).T, {}
    if method == "trak":
        task = AttributionTask(loss_func=margin, model=case.model, checkpoints=state)
        P = case.num_params
        att = A.TRAKAttributor(
            task,
            correct_probability_func=correct_probability,
            projector_kwargs={"proj_dim": kw["proj_dim"], "proj_type": "normal", "device": "cpu"},
            regularization=kw["damping"] / P,  # dattri: gradients / sqrt(P), JL-scaled matrix
        )
        att.cache(train)
        return att.attribute(test_dataloader=test).T, {}
    if method == "rps":
        task = AttributionTask(
            loss_func=loss,
            model=case.model,
            checkpoints=state,
            target_func=lambda out, t: F.cross_entropy(out, t),  # soft targets
        )
        att = A.RPSAttributor(
            task, final_linear_layer_name="head", l2_strength=kw["l2"], epoch=kw.get("epoch", 3000)
        )
        att.cache(train)
        return att.attribute(train, test).T, {}
    if method == "ekfac":
        task = AttributionTask(
            loss_func=sampled_loss, model=case.model, checkpoints=state, target_func=sampled_loss
        )
        att = A.IFAttributorEKFAC(task, damping=lam)
        _SAMPLING["on"], _SAMPLING["gen"] = True, torch.Generator().manual_seed(0)
        try:
            att.cache(train)
        finally:
            _SAMPLING["on"] = False
        return att.attribute(train, test).T, {}
    task = AttributionTask(loss_func=loss, model=case.model, checkpoints=state)
    if method == "explicit":
        att = A.IFAttributorExplicit(task, layer_name=layer, regularization=lam)
    elif method == "cg":
        att = A.IFAttributorCG(task, layer_name=layer, regularization=lam, **kw)
    elif method == "lissa":
        s = kw.pop("scale")  # h <- v + (1 - d) h - H h / s, result h / s: λ = d * s
        att = A.IFAttributorLiSSA(task, layer_name=layer, damping=lam / s, scaling=s, **kw)
    elif method == "arnoldi":
        att = A.IFAttributorArnoldi(task, layer_name=layer, regularization=lam, **kw)
    elif method == "datainf":
        att = A.IFAttributorDataInf(task, layer_name=layer, regularization=lam)
    else:
        raise ValueError(f"unknown dattri method {method!r}")
    att.cache(train)
    return att.attribute(train, test).T, {}
