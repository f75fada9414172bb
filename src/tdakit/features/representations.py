"""Hidden representations: the input of a named layer for a batch, and the model's last
``nn.Linear`` in forward-pass order."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tdakit.batching import call_model
from tdakit.errors import ConfigError, TdakitError, require
from tdakit.features.grads import bad_inputs
from tdakit.task import Task, eval_mode


def last_linear(task: Task, inputs: Any) -> str:
    """Name of the ``nn.Linear`` that runs last in a forward pass on ``inputs``."""
    names = {m: n for n, m in task.model.named_modules() if isinstance(m, nn.Linear)}
    require(len(names) > 0, "The model has no nn.Linear layer; name a layer with layer=...")
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _a: order.append(names[mod])) for m in names]
    try:
        with torch.no_grad(), eval_mode(task.model):
            call_model(task.model, inputs)
    finally:
        for h in hooks:
            h.remove()
    require(len(order) > 0, "No nn.Linear layer ran in the forward pass; name one with layer=.")
    return order[-1]


def layer_inputs(task: Task, layer: str, inputs: Any) -> torch.Tensor:
    """Flattened inputs ``[B, h]`` of module ``layer`` for a batch, in eval mode."""
    modules = dict(task.model.named_modules())
    if layer not in modules:
        raise ConfigError(
            f"No module named {layer!r}; available: {sorted(k for k in modules if k)[:30]}."
        )
    captured: list[torch.Tensor] = []

    def grab(_m: nn.Module, args: tuple) -> None:
        captured.append(args[0].detach().reshape(len(args[0]), -1))

    hook = modules[layer].register_forward_pre_hook(grab)
    try:
        with torch.no_grad(), eval_mode(task.model):
            call_model(task.model, inputs)
    except TdakitError:
        raise
    except Exception as err:
        raise bad_inputs(err) from err
    finally:
        hook.remove()
    require(
        len(captured) == 1,
        f"Layer {layer!r} ran {len(captured)} times in one forward pass; pick a layer that "
        "runs exactly once.",
    )
    return captured[0]
