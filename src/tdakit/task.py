"""The Task contract: a model, its per-example training loss, the query measurement, the
parameters to attribute through, and how a user's batch becomes model inputs and targets;
evaluated functionally with ``torch.func``.

Orientation: :meth:`Task.query_losses` returns the *loss-like* query objective, whose
decrease counts as help: the loss itself, ``-margin`` or ``-logit``. Every method
differentiates this objective, so positive scores always mean "helped the query".
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from tdakit.batching import (
    Inputs,
    batch_len,
    call_model,
    default_output,
    default_split,
    tensors,
    to_device,
)
from tdakit.errors import ConfigError, DataError, TdakitError, require
from tdakit.fingerprints import code_digest
from tdakit.losses import PerExample, check_targets, resolve_loss, resolve_measurement

Params = dict[str, torch.Tensor]
BatchHook = Callable[[Any], tuple[Inputs, torch.Tensor]]
OutputHook = Callable[[Any], torch.Tensor]


@contextmanager
def eval_mode(model: nn.Module):
    """Evaluate in eval mode (BatchNorm running stats, no dropout), then restore."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class Task:
    """What tdakit needs to know about a model to attribute its predictions.

    Args:
        model: any ``torch.nn.Module``; the task evaluates it in eval mode.
        loss: ``"cross_entropy"``, ``"mse"`` (``0.5 * squared error``) or a callable
            ``loss(outputs, targets) -> [batch]`` of per-example losses (never rescaled).
        measurement: what to attribute at a query: ``"loss"`` (default), ``"margin"``,
            an ``int`` logit index, or a loss-like callable ``(outputs, targets) -> [batch]``
            (lower = better; negate a quantity you want to be high).
        params: ``"all"``, ``"last_layer"`` (the last module with parameters *in the forward
            pass*), or names of modules/parameters to attribute through.
        batch: ``batch(raw) -> (inputs, targets)``: how one batch of the user's data becomes
            model inputs (a tensor, a tuple of positional tensors or a dict of keyword
            tensors) and targets. Default: ``(x, y, ...)`` pairs, or mappings whose targets
            are under ``"labels"`` (Hugging Face style; see :func:`tdakit.batching.default_split`).
        output: ``output(model_output) -> tensor``; default: a tensor, ``.logits`` or the
            first element of a tuple.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | PerExample = "cross_entropy",
        measurement: str | int | PerExample = "loss",
        params: str | Sequence[str] = "all",
        *,
        batch: BatchHook | None = None,
        output: OutputHook | None = None,
    ) -> None:
        require(
            isinstance(model, nn.Module),
            f"Task needs a torch.nn.Module, got {type(model).__name__}.",
        )
        require(batch is None or callable(batch), "batch must be a callable batch -> (x, y).")
        require(output is None or callable(output), "output must be a callable output -> tensor.")
        self.model = model
        self.loss_spec, self.measurement_spec = loss, measurement
        self.loss_name, self._loss = resolve_loss(loss)
        self.measurement_name, self._measure = resolve_measurement(measurement, self._loss)
        self.params_spec = params
        self.batch_hook, self.output_hook = batch, output
        self._param_names = _select_params(model, params)
        devices = {p.device for p in model.parameters()}
        require(
            len(devices) == 1,
            f"The model's parameters live on several devices {sorted(map(str, devices))}; "
            "move it to one device with model.to(device).",
        )
        self._out_shape: tuple[int, ...] | None = None

    # --- model state -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def param_names(self) -> tuple[str, ...]:
        if self._param_names is None:
            raise ConfigError(
                "params='last_layer' is resolved from a forward pass: fit a method first, or "
                "call task.split(batch) on one batch of your data."
            )
        return self._param_names

    def params(self) -> Params:
        """Current values of the attributed parameters (detached)."""
        named = dict(self.model.named_parameters())
        return {n: named[n].detach() for n in self.param_names}

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params().values())

    def _frozen(self) -> Params:
        state = {n: p.detach() for n, p in self.model.named_parameters()}
        state.update(dict(self.model.named_buffers()))
        return state

    def fingerprint(self) -> str:
        """A short sha256 of all parameters and buffers (names, shapes, dtypes, values)."""
        h = hashlib.sha256()
        for name, t in sorted(self._frozen().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def code_key(self) -> str:
        """A short sha256 of what, besides the weights, determines every computed value:
        the model's architecture and forward code, the loss, measurement, batch and output
        hooks (their code, not just their names) and the attributed parameters."""
        parts = [
            repr(self.model),
            code_digest(type(self.model)),
            *(code_digest(type(m)) for m in self.model.modules()),
            code_digest(self._loss),
            code_digest(self._measure),
            code_digest(self.batch_hook) if self.batch_hook else "",
            code_digest(self.output_hook) if self.output_hook else "",
            repr(self._param_names or self.params_spec),
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def at(self, state: Mapping[str, torch.Tensor] | nn.Module) -> Task:
        """The same task for other weights (a checkpoint state dict or a module)."""
        model = load_weights(
            copy.deepcopy(self.model),
            state,
            "The checkpoint does not fit the task's model",
            "Pass state dicts (or modules) of exactly the same architecture.",
        )
        return self.with_model(model)

    def with_model(self, model: nn.Module) -> Task:
        """This task's loss, measurement, params and hooks on another model."""
        task = Task(
            model,
            self.loss_spec,
            self.measurement_spec,
            self.params_spec,
            batch=self.batch_hook,
            output=self.output_hook,
        )
        if task._param_names is None and self._param_names is not None:
            task._param_names = self._param_names
        return task

    def with_measurement(self, measurement: str | int | PerExample) -> Task:
        """This task with another query measurement."""
        task = self.with_model(self.model)
        task.measurement_spec = measurement
        task.measurement_name, task._measure = resolve_measurement(measurement, task._loss)
        return task

    # --- batches -------------------------------------------------------------------------
    def split(self, raw: Any) -> tuple[Inputs, torch.Tensor]:
        """A user's batch -> ``(inputs, targets)`` on the model's device, checked.

        Floating inputs must have the model's dtype (they are never cast silently); the
        first batch also resolves ``params="last_layer"`` and checks the targets against the
        model's outputs.
        """
        inputs, targets = (self.batch_hook or default_split)(raw)
        if not isinstance(targets, torch.Tensor):
            try:
                targets = torch.as_tensor(targets)
            except (TypeError, ValueError, RuntimeError) as err:
                raise DataError(
                    f"The targets must be a tensor (or convertible to one), got "
                    f"{type(targets).__name__}."
                ) from err
        n = batch_len(inputs)
        require(
            targets.ndim >= 1 and len(targets) == n,
            f"The batch has {n} inputs but {len(targets) if targets.ndim else 0} targets; "
            "they must match one to one.",
            DataError,
        )
        for t in tensors(inputs):
            if t.is_floating_point():
                require(
                    t.dtype == self.dtype,
                    f"The inputs are {t.dtype} but the model's parameters are {self.dtype}; "
                    f"cast them with X.to({self.dtype}) (or the model with "
                    f"model.to({t.dtype})).",
                    DataError,
                )
                require(  # a sum is NaN/inf if any entry is; overflow gets the exact check
                    math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all()),
                    "The inputs contain NaN or inf; clean or impute them before attribution.",
                    DataError,
                )
        inputs = to_device(inputs, self.device)
        targets = targets.to(self.device)
        if targets.is_floating_point() and targets.dtype != self.dtype:
            targets = targets.to(self.dtype)
        if self._out_shape is None or self._param_names is None:
            self.bind(inputs)
        assert self._out_shape is not None
        check_targets(self._loss, targets, self._out_shape)
        check_targets(self._measure, targets, self._out_shape)
        return inputs, targets

    def bind(self, inputs: Inputs) -> None:
        """Resolve ``params="last_layer"`` from a forward pass; record the output shape."""
        order: list[str] = []
        owners = {m: n for n, m in self.model.named_modules() if _direct_params(m)}
        hooks = [
            m.register_forward_pre_hook(lambda mod, _a: order.append(owners[mod])) for m in owners
        ]
        try:
            with torch.no_grad(), eval_mode(self.model):
                out = self.output_of(call_model(self.model, inputs))
        except TdakitError:
            raise
        except Exception as err:
            raise DataError(
                f"The model could not run on the batch's inputs ({type(err).__name__}: {err}). "
                "Check the input shapes and dtypes, or pass Task(..., batch=fn) to say how a "
                "batch becomes model inputs."
            ) from err
        finally:
            for h in hooks:
                h.remove()
        if self._param_names is None:
            require(len(order) > 0, "No module with parameters ran in the forward pass.")
            self._param_names = _module_params(self.model, order[-1])
        self._out_shape = tuple(out.shape[1:])

    # --- functional evaluation -----------------------------------------------------------
    def output_of(self, raw: Any) -> torch.Tensor:
        return (self.output_hook or default_output)(raw)

    def outputs(self, params: Params, inputs: Inputs) -> torch.Tensor:
        """Model outputs with the attributed parameters replaced by ``params``."""
        state = self._frozen()
        state.update(params)
        with eval_mode(self.model):
            return self.output_of(_functional(self.model, state, inputs))

    def losses(self, params: Params, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
        """Per-example training losses ``[batch]``."""
        out = self.outputs(params, inputs)
        return _per_example(self._loss(out, targets), len(targets), "loss")

    def query_losses(self, params: Params, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
        """Per-example loss-like query objective ``[batch]`` (lower = better)."""
        out = self.outputs(params, inputs)
        return _per_example(self._measure(out, targets), len(targets), "measurement")


def _functional(model: nn.Module, state: Params, inputs: Inputs) -> Any:
    if isinstance(inputs, Mapping):
        return functional_call(model, state, (), dict(inputs))
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    return functional_call(model, state, args)


def load_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor] | nn.Module, what: str, fix: str
) -> nn.Module:
    """Load a state dict (or another module's weights) into ``model``, or raise
    ``ConfigError(f"{what}: <reason>. {fix}")``."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    try:
        model.load_state_dict(dict(state))
    except (RuntimeError, KeyError, TypeError) as err:
        reason = " ".join(str(err).split()).rstrip(".")  # one line; torch's spans several
        raise ConfigError(f"{what}: {reason}. {fix}") from err
    return model


def _per_example(values: torch.Tensor, n: int, what: str) -> torch.Tensor:
    require(
        isinstance(values, torch.Tensor) and values.shape == (n,),
        f"The {what} must return one value per example (shape [{n}]), got "
        f"{tuple(getattr(values, 'shape', ()))}; use reduction='none' in your loss function.",
    )
    return values


def _direct_params(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


def _module_params(model: nn.Module, owner: str) -> tuple[str, ...]:
    prefix = f"{owner}." if owner else ""
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    return tuple(n for n in named if n.startswith(prefix) and "." not in n[len(prefix) :])


def _select_params(model: nn.Module, spec: str | Sequence[str]) -> tuple[str, ...] | None:
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    require(len(named) > 0, "The model has no trainable parameters to attribute through.")
    if isinstance(spec, str) and spec == "all":
        return tuple(named)
    if isinstance(spec, str) and spec == "last_layer":
        return None  # resolved from the first forward pass (bind)
    require(
        not isinstance(spec, str) and isinstance(spec, Sequence),
        f"params must be 'all', 'last_layer' or a list of module/parameter names, got {spec!r}.",
    )
    require(
        len(spec) > 0,
        "params is an empty list: name at least one module or parameter, or use 'all'.",
    )
    chosen: list[str] = []
    for key in spec:
        require(isinstance(key, str), f"params entries must be names (str), got {key!r}.")
        hits = [n for n in named if n == key or n.startswith(f"{key}.")]
        if not hits:
            modules = sorted({n.rsplit(".", 1)[0] for n in named if "." in n})
            raise ConfigError(
                f"No trainable parameter or module named {key!r}; modules with parameters: "
                f"{modules}."
            )
        chosen += [n for n in hits if n not in chosen]
    return tuple(n for n in named if n in chosen)
