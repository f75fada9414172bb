"""Representation similarity: cosine or dot product of hidden representations (METHODS.md §2)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from tdakit.errors import TdakitError, require
from tdakit.inputs import batches, check_float_dtype
from tdakit.methods.base import FeatureMethod
from tdakit.methods.gradient import unit_rows
from tdakit.task import Task, eval_mode


def last_linear_name(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` module (its input is the penultimate representation)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    require(len(names) > 0, "The model has no nn.Linear layer; name a layer with layer=...")
    return names[-1]


def layer_inputs(model: nn.Module, layer: str, X: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Flattened inputs of module ``layer`` for every row of ``X`` ``[n, h]``, in eval mode."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise TdakitError(
            f"No module named {layer!r}; available: {sorted(k for k in modules if k)}."
        )
    param = next(model.parameters())
    check_float_dtype(X, param.dtype, "layer")
    captured: list[torch.Tensor] = []
    hook = modules[layer].register_forward_pre_hook(
        lambda _m, args: captured.append(args[0].detach().reshape(len(args[0]), -1))
    )
    try:
        with torch.no_grad(), eval_mode(model):
            for _, _, xb, _ in batches(
                X, X[:, :0] if X.ndim > 1 else X, batch_size, param.device, param.dtype
            ):
                model(xb)
    finally:
        hook.remove()
    return torch.cat(captured)


class RepresentationSimilarity(FeatureMethod):
    """``S[q, i] = sim(h_q, h_i)`` with ``h`` the input of ``layer`` (default: the last Linear).

    Label-agnostic: it says which training inputs the model sees as alike, not which
    ones changed the prediction.
    """

    def __init__(
        self,
        task: Task,
        *,
        layer: str | None = None,
        similarity: Literal["cos", "dot"] = "cos",
        **kw,
    ) -> None:
        super().__init__(task, **kw)
        require(
            similarity in ("cos", "dot"), f"similarity must be 'cos' or 'dot', got {similarity!r}."
        )
        self.layer = layer or last_linear_name(task.model)
        self.similarity = similarity

    def cache_config(self) -> dict:
        return {**super().cache_config(), "layer": self.layer, "similarity": self.similarity}

    def _features(self, X: torch.Tensor, y: torch.Tensor, objective: str) -> torch.Tensor:
        H = layer_inputs(self.task.model, self.layer, X, self.batch_size)
        return unit_rows(H) if self.similarity == "cos" else H
