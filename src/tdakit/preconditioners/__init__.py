"""The preconditioner stage: curvature models fitted once on the training data, applied
to query features (see :mod:`tdakit.preconditioners.base` for the protocol).

Solver objects hold their options; a name is shorthand for the defaults::

    tda.InfluenceFunction(task, solver=tda.solvers.CG(tol=1e-4))
    tda.InfluenceFunction(task, solver="cg")          # CG() with its defaults
"""

from tdakit.errors import ConfigError, require
from tdakit.preconditioners.arnoldi import Arnoldi, arnoldi_eigs
from tdakit.preconditioners.base import (
    Curvature,
    Identity,
    Preconditioner,
    Relative,
    as_damping,
)
from tdakit.preconditioners.datainf import DataInf
from tdakit.preconditioners.exact import CholeskyInverse, Exact, Projected
from tdakit.preconditioners.iterative import CG, LiSSA, conjugate_gradient, power_iteration
from tdakit.preconditioners.kfac import EKFAC, KFAC
from tdakit.preconditioners.operators import CurvatureOperator, MatrixProjector

SOLVERS: dict[str, type[Preconditioner]] = {
    cls.name: cls for cls in (Exact, Projected, CG, LiSSA, Arnoldi, KFAC, EKFAC, DataInf)
}


def make_solver(solver: str | Preconditioner | dict) -> Preconditioner:
    """A solver object from itself, a name (its defaults) or a config dict."""
    if isinstance(solver, Preconditioner):
        return solver
    if isinstance(solver, dict):
        require("name" in solver, f"A solver config needs a 'name', got {solver}.")
        options = {k: v for k, v in solver.items() if k != "name"}
        cls = SOLVERS.get(solver["name"])
        require(cls is not None, f"Unknown solver {solver['name']!r}; use one of {tuple(SOLVERS)}.")
        try:
            return cls(**options)  # type: ignore[misc]
        except TypeError as err:
            raise ConfigError(f"Bad options for solver {solver['name']!r}: {err}.") from err
    require(
        isinstance(solver, str) and solver in SOLVERS,
        f"Unknown solver {solver!r}; use one of {tuple(SOLVERS)} or a solver object such as "
        "tda.solvers.CG(tol=1e-4).",
    )
    return SOLVERS[solver]()


__all__ = [
    "CG",
    "EKFAC",
    "KFAC",
    "SOLVERS",
    "Arnoldi",
    "CholeskyInverse",
    "Curvature",
    "CurvatureOperator",
    "DataInf",
    "Exact",
    "Identity",
    "LiSSA",
    "MatrixProjector",
    "Preconditioner",
    "Projected",
    "Relative",
    "arnoldi_eigs",
    "as_damping",
    "conjugate_gradient",
    "make_solver",
    "power_iteration",
]
