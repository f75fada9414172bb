"""DataInf: a closed-form, layer-wise inverse of the damped empirical Fisher.

Per layer ``l``, ``(F_l + lam_l I)^{-1}`` is approximated by ``(1/N) sum_j (g_jl g_jl^T +
lam_l I)^{-1}``; with Sherman-Morrison each term is ``(I - g g^T / (lam_l + |g|^2)) / lam_l``:

    prep(q)_l = (q_l - (1/N) sum_j g_jl (g_jl . q_l) / (lam_l + |g_jl|^2)) / lam_l.

The sum over training examples is streamed over the training feature blocks for each block
of queries, so no ``[N, P]`` matrix is needed beyond what the method already keeps.
"""

from __future__ import annotations

import torch

from tdakit.errors import require
from tdakit.preconditioners.base import (
    Curvature,
    Preconditioner,
    Relative,
    check_finite_result,
    relative_damping,
)
from tdakit.preconditioners.operators import layer_slices


class DataInf(Preconditioner):
    """DataInf (Kwon et al. 2024). Damping: absolute ``lam`` for every layer, or
    ``Relative(c)``: ``lam_l = c * mean(g_l^2)`` per layer (exact, from the features)."""

    name = "datainf"
    curvatures = ("fisher",)
    needs_features = True

    def __init__(self) -> None:
        self.curvature_: Curvature | None = None

    def fit(self, curvature: Curvature) -> DataInf:
        require(
            curvature.kind in self.curvatures,
            f"DataInf inverts the empirical Fisher; got curvature={curvature.kind!r}.",
        )
        names, self.slices_ = layer_slices(curvature.task)
        d = curvature.damping
        if isinstance(d, Relative):
            require(
                d.estimate in ("auto", "exact", "grad_sq"),
                "DataInf's relative damping uses the exact per-layer mean(g^2); use "
                "Relative(c) with estimate='auto'.",
            )
            sums = torch.zeros(len(self.slices_), dtype=torch.float64)
            count = 0
            for _, _, T in curvature.iter_features():
                sums += torch.stack([T[:, s].double().pow(2).sum() for s in self.slices_]).cpu()
                count += len(T)
            widths = torch.tensor([s.stop - s.start for s in self.slices_], dtype=torch.float64)
            means = (sums / (count * widths)).tolist()
            self.mean_diagonal_ = dict(zip(names, means, strict=True))
            lams = [relative_damping(d.factor, m) for m in means]
        else:
            lams = [float(d)] * len(self.slices_)
        require(
            all(lam > 0 for lam in lams),
            "DataInf divides by the damping: use damping > 0 (or tda.solvers.Relative(c)).",
        )
        self.lams_ = lams
        self.damping_ = dict(zip(names, lams, strict=True))
        self.curvature_ = curvature
        return self

    def apply(self, G: torch.Tensor) -> torch.Tensor:
        self._check_fitted(self.curvature_ is not None)
        assert self.curvature_ is not None
        accs = [torch.zeros_like(G[:, s]) for s in self.slices_]
        n = 0
        for _, _, T in self.curvature_.iter_features():
            T = T.to(G.dtype)
            n += len(T)
            for acc, s, lam in zip(accs, self.slices_, self.lams_, strict=True):
                Tl = T[:, s]
                sq = torch.linalg.vector_norm(Tl, dim=1).square()  # no [rows, width] temporary
                acc += ((G[:, s] @ Tl.T) / (lam + sq)) @ Tl
        out = torch.empty_like(G)
        for acc, s, lam in zip(accs, self.slices_, self.lams_, strict=True):
            out[:, s] = (G[:, s] - acc / n) / lam
        return check_finite_result(out, "datainf")
