"""Curvature of the mean training loss (Hessian, GGN, empirical Fisher) and inverse solvers.

Every solver maps rows ``G [n, P]`` to rows of ``(C + lam I)^{-1} G``.
"""

from tdakit.curvature.iterative import CGSolver, LissaSolver, power_iteration
from tdakit.curvature.lanczos import ArnoldiSolver, arnoldi_eigs
from tdakit.curvature.operators import CurvatureOperator, MatrixProjector
from tdakit.curvature.solvers import DataInfSolver, ExactSolver

__all__ = [
    "ArnoldiSolver",
    "CGSolver",
    "CurvatureOperator",
    "DataInfSolver",
    "ExactSolver",
    "LissaSolver",
    "MatrixProjector",
    "arnoldi_eigs",
    "power_iteration",
]
