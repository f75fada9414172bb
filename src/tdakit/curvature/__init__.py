"""Curvature of the mean training loss (Hessian, GGN, empirical Fisher) and inverse solvers."""

from tdakit.curvature.operators import CurvatureOperator, MatrixProjector

__all__ = ["CurvatureOperator", "MatrixProjector"]
