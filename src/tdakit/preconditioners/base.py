"""The preconditioner stage: one protocol for every curvature model.

A :class:`Preconditioner` is configured in its constructor (its options, nothing else),
fitted once with :meth:`~Preconditioner.fit` on a :class:`Curvature` (the task, the
training data, which curvature, the damping, and the training features when they exist),
then maps query feature rows ``Q [n, d]`` to ``(C + lam I)^{-1} Q`` with
:meth:`~Preconditioner.apply`. Where the inverse is explicit it also offers
:meth:`~Preconditioner.logdet` and :meth:`~Preconditioner.quadratic` (a Gaussian
posterior's entropy and predictive variances need them).

Damping ``lam`` is absolute (added to the curvature of the MEAN training loss) when given
as a number, or :class:`Relative` (``factor * mean diag C``, estimated as documented there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from tdakit.errors import ConfigError, NotFittedError, NumericalError, require

if TYPE_CHECKING:
    from tdakit.data.sources import Source
    from tdakit.features.projection import Projector
    from tdakit.preconditioners.operators import CurvatureOperator
    from tdakit.task import Task

KINDS = ("hessian", "ggn", "fisher")
LABELS = {"hessian": "Hessian", "ggn": "GGN", "fisher": "empirical Fisher"}
ESTIMATES = ("auto", "exact", "hutchinson", "grad_sq")


def check_damping(damping: float, name: str = "damping") -> float:
    require(
        isinstance(damping, (int, float)) and not isinstance(damping, bool),
        f"{name} must be a number, got {damping!r}.",
    )
    require(
        math.isfinite(damping) and damping >= 0,
        f"{name} must be finite and >= 0, got {damping}; it is the absolute λ added to the "
        "curvature of the mean training loss (use tda.solvers.Relative(c) for c * mean diag).",
    )
    return float(damping)


@dataclass(frozen=True)
class Relative:
    """Relative damping ``lam = factor * mean diag(C)``.

    ``estimate``: how ``mean diag(C)`` is obtained: ``"auto"`` (exact when a matrix is
    formed, per layer for DataInf, otherwise Hutchinson), ``"exact"``, ``"hutchinson"``
    (``samples`` Rademacher probes, ``seed``) or ``"grad_sq"`` (``mean(g^2)``: the empirical
    Fisher's mean diagonal, from the training features).
    """

    factor: float = 0.1
    estimate: str = "auto"
    samples: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        check_damping(self.factor, "Relative damping factor")
        require(
            self.estimate in ESTIMATES,
            f"Unknown estimate {self.estimate!r}; use one of {ESTIMATES}.",
        )
        require(
            isinstance(self.samples, int) and self.samples > 0,
            f"samples must be a positive int, got {self.samples!r}.",
        )

    def to_config(self) -> dict:
        return {
            "relative": self.factor,
            "estimate": self.estimate,
            "samples": self.samples,
            "seed": self.seed,
        }


Damping = float | Relative


def as_damping(value: Any) -> Damping:
    """A number (absolute), a :class:`Relative`, or a config dict ``{"relative": c, ...}``."""
    if isinstance(value, Relative):
        return value
    if isinstance(value, dict):
        require("relative" in value, f"A damping dict needs a 'relative' factor, got {value}.")
        rest = {k: v for k, v in value.items() if k != "relative"}
        unknown = sorted(set(rest) - {"estimate", "samples", "seed"})
        require(
            not unknown,
            f"Unknown relative damping option(s) {unknown} in {value}; "
            "use {'relative': c, 'estimate': ..., 'samples': ..., 'seed': ...}.",
        )
        return Relative(value["relative"], **rest)
    return check_damping(value)


def damping_config(value: Damping) -> Any:
    return value.to_config() if isinstance(value, Relative) else value


@dataclass
class Curvature:
    """What a preconditioner is fitted on.

    Args:
        task: model, loss and attributed parameters.
        source: the training data (streamed batch by batch).
        kind: ``"hessian"``, ``"ggn"`` or ``"fisher"`` (empirical) of the MEAN training loss.
        damping: absolute ``lam`` or :class:`Relative`.
        features: ``iter_features()`` yields ``(start, stop, T_block)`` training feature
            blocks when the method has them (gradients, projected gradients), else None.
        projector: the projection the features were computed with (None = exact gradients).
        batch_size, progress: batching of passes over the data; progress bars.
    """

    task: Task
    source: Source
    kind: str
    damping: Damping
    features: Callable[[], Iterator[tuple[int, int, torch.Tensor]]] | None = None
    projector: Projector | None = None
    batch_size: int = 128
    progress: bool = False
    mean_diagonal: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        require(self.kind in KINDS, f"Unknown curvature {self.kind!r}; use one of {KINDS}.")
        self.damping = as_damping(self.damping)  # solvers trust it: validate it once here

    @property
    def n(self) -> int:
        return len(self.source)

    def operator(self) -> CurvatureOperator:
        from tdakit.preconditioners.operators import CurvatureOperator

        return CurvatureOperator(
            self.task, self.source, self.kind, batch_size=self.batch_size, progress=self.progress
        )

    def iter_features(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        require(
            self.features is not None,
            "This preconditioner needs the training features (gradients); fit it through a "
            "gradient method such as InfluenceFunction.",
        )
        assert self.features is not None
        return self.features()

    def feature_gram(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``T^T T / N`` of the training features, accumulated block by block."""
        M = None
        for _, _, T in self.iter_features():
            T = T.to(dtype)
            M = T.T @ T if M is None else M.addmm_(T.T, T)
        assert M is not None
        return M / self.n

    def resolve(
        self,
        exact: Callable[[], float] | None = None,
        op: CurvatureOperator | None = None,
    ) -> float:
        """The absolute ``lam``: the number itself, or ``factor * mean diag C``."""
        d = self.damping
        if not isinstance(d, Relative):
            return float(d)
        est = d.estimate
        if est == "auto":
            est = "exact" if exact is not None else "hutchinson"
        if est == "grad_sq":
            total, count = 0.0, 0
            for _, _, T in self.iter_features():
                total += float(T.double().pow(2).sum())
                count += T.numel()
            mean = total / max(count, 1)
        elif est == "exact":
            if exact is None:
                op = op or self.operator()
                M = op.matrix()
                exact = lambda: float(M.diagonal().mean())  # noqa: E731
            mean = exact()
        else:
            op = op or self.operator()
            mean = op.hutchinson_mean_diagonal(d.samples, d.seed)
        self.mean_diagonal = mean
        return relative_damping(d.factor, mean)


def relative_damping(factor: float, mean: float) -> float:
    if not (mean > 0 and math.isfinite(mean)):
        raise NumericalError(
            f"Relative damping needs a positive mean curvature diagonal, got {mean:.3g} (an "
            "indefinite Hessian or zero gradients); use an absolute damping, curvature='ggn' "
            "or Relative(c, estimate='grad_sq')."
        )
    return factor * mean


class Preconditioner:
    """Base class: options in the constructor, :meth:`fit` does the work (see module doc).

    Class attributes: ``name`` (registry shorthand), ``curvatures`` (allowed kinds; the
    first is the default), ``needs_features`` (fit reads the training features).
    """

    name: ClassVar[str] = "preconditioner"
    curvatures: ClassVar[tuple[str, ...]] = KINDS
    needs_features: ClassVar[bool] = False

    damping_: float | dict[str, float] | None = None

    @property
    def projector(self) -> Projector | None:
        """A projection the features must use (only the projected solver has one)."""
        return None

    def fit(self, curvature: Curvature) -> Preconditioner:
        raise NotImplementedError

    def apply(self, Q: torch.Tensor) -> torch.Tensor:
        """Rows ``Q [n, d]`` -> rows of ``(C + lam I)^{-1} Q``."""
        raise NotImplementedError

    def quadratic(self, Q: torch.Tensor) -> torch.Tensor:
        """``q^T (C + lam I)^{-1} q`` for each row ``[n]``."""
        return (Q * self.apply(Q)).sum(1)

    def logdet(self) -> float:
        """``log det (C + lam I)`` where the inverse is explicit."""
        raise ConfigError(f"The {self.name} preconditioner has no explicit log-determinant.")

    def to_config(self) -> dict:
        """``{"name": ..., **options}`` as plain data."""
        return {"name": self.name, **self.options()}

    def options(self) -> dict:
        return {}

    def _check_fitted(self, ready: bool) -> None:
        if not ready:
            raise NotFittedError(f"The {self.name} preconditioner is not fitted: call fit first.")

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


class Identity(Preconditioner):
    """No curvature: ``apply(Q) = Q`` (Grad-Dot, TracIn, representations)."""

    name = "identity"

    def fit(self, curvature: Curvature | None = None) -> Identity:
        self.damping_ = 0.0
        return self

    def apply(self, Q: torch.Tensor) -> torch.Tensor:
        return Q


def check_finite_result(out: torch.Tensor, solver: str) -> torch.Tensor:
    if not torch.isfinite(out).all():
        raise NumericalError(
            f"The {solver} solver produced non-finite values: the damped curvature is (nearly) "
            "singular or indefinite. Increase the damping (or use tda.solvers.Relative), or "
            "use curvature='ggn'."
        )
    return out


def in_row_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor], G: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Apply ``fn`` to ``G`` in chunks of at most ``chunk`` rows."""
    require(G.ndim == 2, f"Expected a block of vectors [n, d], got shape {tuple(G.shape)}.")
    if len(G) <= chunk:
        return fn(G)
    return torch.cat([fn(G[a : a + chunk]) for a in range(0, len(G), chunk)])


def not_positive_definite(
    kind: str, damping: float, min_eig: float | None = None, where: str = ""
) -> str:
    """The error message for an indefinite or singular damped curvature."""
    kind = LABELS.get(kind, kind)
    if min_eig is None:
        return (
            f"The damped {kind} ({kind} + λI, λ={damping:.3g}) is not positive definite"
            f"{where}. Use a larger damping (or tda.solvers.Relative), or curvature='ggn' "
            "(positive semi-definite)."
        )
    need = max(-min_eig, 0.0)
    suggest = max(2 * need, 1e-3 * abs(min_eig), 1e-8)
    return (
        f"{kind} + λI is not (numerically) positive definite{where}: its smallest eigenvalue "
        f"is {min_eig:.3g} and the damping is λ={damping:.3g}. Use a larger damping "
        f"(above {need:.3g}, e.g. damping={suggest:.3g}) or tda.solvers.Relative, or "
        "curvature='ggn' (positive semi-definite)."
    )


def check_option(
    value: Any, name: str, kind: type | tuple, low: float | None = None, strict: bool = True
) -> Any:
    """Validate a solver option's type (never a bool for numbers) and lower bound."""
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and low is not None:
        ok = math.isfinite(value) and (value > low if strict else value >= low)
    what = "an integer" if kind is int else "a number"
    bound = "" if low is None else f" {'>' if strict else '>='} {low}"
    require(ok, f"{name} must be {what}{bound}, got {value!r}.")
    return value
