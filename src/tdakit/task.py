"""The Task contract: a model, its per-example training loss, the query measurement, the
parameters to attribute through, evaluated functionally with ``torch.func``.

Orientation: :meth:`Task.query_losses` returns the *loss-like* query objective, whose
decrease counts as help: the loss itself, ``-margin`` or ``-logit``. Every method
differentiates this objective, so positive scores always mean "helped the query".
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from tdakit.errors import TdakitError, require

PerExample = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Params = dict[str, torch.Tensor]

LOSSES = ("cross_entropy", "mse")
MEASUREMENTS = ("loss", "margin")


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy of logits ``[B, C]`` at integer labels ``[B]``."""
    require(
        outputs.ndim == 2,
        f"cross_entropy needs logits of shape [batch, classes], got {tuple(outputs.shape)}.",
    )
    require(
        not targets.is_floating_point() and targets.ndim == 1,
        f"cross_entropy needs integer class labels of shape [batch], got {targets.dtype} "
        f"{tuple(targets.shape)}; convert with y.long().",
    )
    return F.cross_entropy(outputs, targets, reduction="none")


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example ``0.5 * ||f(x) - y||^2`` (so its Gauss-Newton matrix is ``J^T J``)."""
    targets = targets.to(outputs.dtype)
    if targets.shape != outputs.shape:
        require(
            targets.numel() == outputs.numel(),
            f"mse targets of shape {tuple(targets.shape)} do not match model outputs "
            f"{tuple(outputs.shape)}.",
        )
        targets = targets.reshape(outputs.shape)
    return 0.5 * (outputs - targets).pow(2).reshape(len(outputs), -1).sum(1)


def negative_margin(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-(z_y - logsumexp_{j != y} z_j)``: the loss-like form of the classification margin."""
    require(outputs.ndim == 2 and outputs.shape[1] >= 2, "margin needs logits [batch, C>=2].")
    correct = outputs.gather(1, targets.long().view(-1, 1)).squeeze(1)
    others = outputs.scatter(1, targets.long().view(-1, 1), float("-inf"))
    return torch.logsumexp(others, dim=1) - correct


def _negative_logit(index: int) -> PerExample:
    def measure(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -outputs[:, index]

    return measure


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
        params: ``"all"``, ``"last_layer"``, or names of modules/parameters to attribute
            through; the others are held fixed.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | PerExample = "cross_entropy",
        measurement: str | int | PerExample = "loss",
        params: str | Sequence[str] = "all",
    ) -> None:
        require(
            isinstance(model, nn.Module),
            f"Task needs a torch.nn.Module, got {type(model).__name__}.",
        )
        self.model = model
        self.loss_name, self._loss = _resolve_loss(loss)
        self.measurement_name, self._measure = _resolve_measurement(measurement, self._loss)
        self.params_spec = params
        self.param_names = _select_params(model, params)
        devices = {p.device for p in model.parameters()}
        require(
            len(devices) == 1,
            f"The model's parameters live on several devices {sorted(map(str, devices))}; "
            "move it to one device with model.to(device).",
        )

    # --- model state -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

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
            t = t.detach().cpu().contiguous()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:16]

    def at(self, state: Mapping[str, torch.Tensor] | nn.Module) -> Task:
        """The same task for other weights (a checkpoint state dict or a module)."""
        model = load_weights(
            copy.deepcopy(self.model), state,
            "The checkpoint does not fit the task's model",
            "Pass state dicts (or modules) of exactly the same architecture.",
        )  # fmt: skip
        return Task(model, self._loss, self._measure, self.params_spec)

    # --- functional evaluation -----------------------------------------------------------
    def outputs(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Model outputs with the attributed parameters replaced by ``params``."""
        state = self._frozen()
        state.update(params)
        with eval_mode(self.model):
            return functional_call(self.model, state, (x,))

    def losses(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example training losses ``[batch]``."""
        return _per_example(self._loss(self.outputs(params, x), y), len(x), "loss")

    def query_losses(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example loss-like query objective ``[batch]`` (lower = better)."""
        return _per_example(self._measure(self.outputs(params, x), y), len(x), "measurement")


def load_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor] | nn.Module, what: str, fix: str
) -> nn.Module:
    """Load a state dict (or another module's weights) into ``model``, or raise
    ``TdakitError(f"{what}: <reason>. {fix}")``."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    try:
        model.load_state_dict(dict(state))
    except (RuntimeError, KeyError) as err:
        raise TdakitError(f"{what}: {err}. {fix}") from err
    return model


def _per_example(values: torch.Tensor, n: int, what: str) -> torch.Tensor:
    require(
        values.shape == (n,),
        f"The {what} must return one value per example (shape [{n}]), got "
        f"{tuple(values.shape)}; use reduction='none' in your loss function.",
    )
    return values


def _resolve_loss(loss: str | PerExample) -> tuple[str, PerExample]:
    if callable(loss):
        return getattr(loss, "__name__", "custom"), loss
    table = {"cross_entropy": cross_entropy, "mse": squared_error}
    require(loss in table, f"Unknown loss {loss!r}; use one of {LOSSES} or a callable.")
    return str(loss), table[loss]


def _resolve_measurement(
    measurement: str | int | PerExample, loss: PerExample
) -> tuple[str, PerExample]:
    if isinstance(measurement, bool):
        raise TdakitError("measurement must be 'loss', 'margin', a logit index or a callable.")
    if isinstance(measurement, int):
        require(measurement >= 0, f"The logit index must be >= 0, got {measurement}.")
        return f"logit[{measurement}]", _negative_logit(measurement)
    if callable(measurement):
        return getattr(measurement, "__name__", "custom"), measurement
    table = {"loss": loss, "margin": negative_margin}
    require(
        measurement in table,
        f"Unknown measurement {measurement!r}; use one of {MEASUREMENTS}, a logit index "
        "or a loss-like callable.",
    )
    return str(measurement), table[measurement]


def _select_params(model: nn.Module, spec: str | Sequence[str]) -> tuple[str, ...]:
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    require(len(named) > 0, "The model has no trainable parameters to attribute through.")
    if spec == "all":
        return tuple(named)
    if spec == "last_layer":
        owners = [m for m, mod in model.named_modules() if list(mod.parameters(recurse=False))]
        last = owners[-1]
        prefix = f"{last}." if last else ""
        return tuple(n for n in named if n.startswith(prefix) and "." not in n[len(prefix) :])
    require(
        not isinstance(spec, str),
        f"params must be 'all', 'last_layer' or a list of module/parameter names, got {spec!r}.",
    )
    chosen: list[str] = []
    for key in spec:
        hits = [n for n in named if n == key or n.startswith(f"{key}.")]
        if not hits:
            modules = sorted({n.rsplit(".", 1)[0] for n in named if "." in n})
            raise TdakitError(
                f"No trainable parameter or module named {key!r}; modules with parameters: "
                f"{modules}."
            )
        chosen += [n for n in hits if n not in chosen]
    return tuple(n for n in named if n in chosen)
