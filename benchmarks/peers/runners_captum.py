"""captum (0.9) runners. ``influence(inputs)`` returns ``[n_query, n_train]``, positive =
proponent (helpful): tdakit's orientation. captum's influence functions use the Hessian of
the SUM of the training losses and add ``hessian_reg`` to it, so ``hessian_reg = N λ`` and
the scores then equal tdakit's (the 1/N is included: ``(N H + N λ I)^-1 = (H + λ I)^-1 / N``).
"""

from __future__ import annotations

import torch
from common import Case  # type: ignore[import-not-found]
from torch import nn
from torch.utils.data import TensorDataset


def _load(model: nn.Module, path) -> float:
    model.load_state_dict(torch.load(path))
    return 1.0  # the "learning rate" TracIn weights the checkpoint with


def run(case: Case, method: str, last_layer: bool = False, **kw):
    from captum.influence import TracInCP, TracInCPFast
    from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction
    from captum.influence._core.influence_function import NaiveInfluenceFunction

    train = TensorDataset(case.X, case.y)
    common = {
        "train_dataset": train,
        "checkpoints_load_func": _load,
        "loss_fn": nn.CrossEntropyLoss(reduction="sum"),
        "batch_size": kw.pop("batch_size", case.n_train),
    }
    ckpt = str(case.checkpoint)
    if method == "tracincp":
        est = TracInCP(
            case.model,
            checkpoints=[ckpt],
            layers=["head"] if last_layer else None,
            sample_wise_grads_per_batch=True,
            **common,
        )
    elif method == "tracincp_fast":
        est = TracInCPFast(case.model, final_fc_layer="head", checkpoints=[ckpt], **common)
    else:
        N, lam = case.n_train, case.lam
        cls = {"naive": NaiveInfluenceFunction, "arnoldi": ArnoldiInfluenceFunction}[method]
        if method == "naive":  # keep every eigenpair: the exact damped inverse
            kw.setdefault("projection_dim", _num_params(case, last_layer))
        est = cls(
            case.model,
            checkpoint=ckpt,
            layers=["head"] if last_layer else None,
            sample_wise_grads_per_batch=True,
            hessian_reg=N * lam,
            **kw,
            **common,
        )
    scores = est.influence((case.Xq, case.yq), show_progress=False)
    return scores, {}


def _num_params(case: Case, last_layer: bool) -> int:
    if last_layer:
        return sum(p.numel() for p in case.model.head.parameters())
    return case.num_params
