"""The demo's methods, by registry configuration, and what they may take from the run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import tdakit
from tdakit.errors import ConfigError
from tdakit.methods.base import AttributionMethod
from tdakit.task import Task

__all__ = ["INFLUENCE_DAMPING", "METHODS", "DemoContext", "MethodEntry"]


@dataclass
class DemoContext:
    """What a method may take from the run: the task, training checkpoints, the seed."""

    task: Task
    checkpoints: list[dict[str, torch.Tensor]]
    checkpoint_lrs: list[float]
    seed: int
    progress: bool

    def objects(self) -> dict[str, object]:
        return {"checkpoints": self.checkpoints, "lrs": self.checkpoint_lrs}


@dataclass(frozen=True)
class MethodEntry:
    """A method in the demo, by its registry configuration.

    ``config`` is what :func:`tdakit.methods.from_config` takes (``{"method": name, ...}``);
    ``uses`` names run objects passed too (``"checkpoints"``, ``"lrs"``). An ``optional``
    entry whose method is not registered (an extra that is not installed) is skipped with
    the reason printed and shown in the report.
    """

    name: str
    config: dict
    description: str
    uses: tuple[str, ...] = ()
    optional: bool = False

    def resolve(self) -> tuple[type | None, str]:
        """``(class, "")`` if registered, else ``(None, reason)``; required entries raise."""
        method = self.config.get("method")
        if method not in tdakit.methods.METHODS:
            if not self.optional:
                raise ConfigError(f"Method {method!r} is not registered; the install is broken.")
            return None, f"method {method!r} is not available in this installation"
        return tdakit.methods.METHODS[method], ""

    def build(self, ctx: DemoContext) -> AttributionMethod:
        objects = ctx.objects()
        config = {**self.config, "progress": ctx.progress}
        if "seed" in self.config:
            config["seed"] = ctx.seed
        return tdakit.methods.from_config(config, ctx.task, **{k: objects[k] for k in self.uses})


INFLUENCE_DAMPING = 0.01  # absolute λ; 1e-3 leaves the near-singular GGN directions too noisy


def _influence(solver: str, **kw: object) -> dict:
    return {"method": "influence", "solver": solver, "damping": INFLUENCE_DAMPING, **kw}


METHODS: list[MethodEntry] = [
    MethodEntry(
        "GradDot", {"method": "grad_dot"}, "g_q · g_i: loss gradients at the final weights"
    ),
    MethodEntry(
        "GradCos", {"method": "grad_cos"}, "cosine of the loss gradients (no gradient-norm bias)"
    ),
    MethodEntry(
        "TracIn",
        {"method": "tracin"},
        "Σ_t η_t g_q(θ_t) · g_i(θ_t) over the saved training checkpoints",
        uses=("checkpoints", "lrs"),
    ),
    MethodEntry(
        "Influence (exact GGN)",
        _influence("exact", curvature="ggn"),
        "(1/N) g_qᵀ (G + λI)⁻¹ g_i, exact Gauss-Newton matrix, λ=0.01",
    ),
    MethodEntry(
        "Influence (EK-FAC)",
        _influence("ekfac"),
        "influence with eigenvalue-corrected Kronecker-factored GGN, λ=0.01",
    ),
    MethodEntry(
        "DataInf", _influence("datainf"), "closed-form layerwise influence approximation, λ=0.01"
    ),
    MethodEntry(
        "TRAK",
        {"method": "trak", "seed": 0},
        "projected margin gradients (k=512), (ΦᵀΦ + λI)⁻¹ kernel, averaged over the "
        "TracIn checkpoints",
        uses=("checkpoints",),
    ),
    MethodEntry(
        "RepresenterPoints",
        {"method": "representer"},
        "α_i · h_iᵀ h_q from an L2-regularised refit of the last layer",
    ),
    MethodEntry(
        "RepresentationSimilarity",
        {"method": "representation_similarity"},
        "cosine of penultimate-layer representations (label-agnostic)",
    ),
    MethodEntry(
        "RandomBaseline", {"method": "random", "seed": 0}, "i.i.d. N(0, 1) scores: the chance level"
    ),
]
