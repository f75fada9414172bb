"""tdakit side of the comparison: one entry per method, all in tdakit's own convention
(scores ``[n_query, n_train]``, positive = helped, influence scores carry 1/N).

Methods are built from their registry configuration (``tda.methods.from_config``), the
same dicts ``method.to_config()`` produces; ``configs.GROUPS`` holds them."""

from __future__ import annotations

import torch
from common import Case  # type: ignore[import-not-found]

import tdakit as tda
from tdakit.preconditioners.operators import MatrixProjector


def _task(case: Case, params: str | list[str] = "all") -> tda.Task:
    return tda.Task(case.model, params=params)


def run(
    case: Case, method: str, params: str | list[str] = "all", **kw
) -> tuple[torch.Tensor, dict]:
    """Fit the registry method ``method`` (options ``kw``) on the case's training set and
    score its queries."""
    task = _task(case, params)
    train, queries = (case.X, case.y), (case.Xq, case.yq)
    info: dict = {}
    runtime: dict = {}
    if method == "influence":
        kw.setdefault("damping", case.lam)
    elif method == "trak":
        k = kw.pop("traker_projection", None)
        if k is not None:  # traker's own projection matrix (same seed and generator)
            kw["projection"] = MatrixProjector(_traker_matrix(case.num_params, k))
        runtime["checkpoints"] = [case.model]
    est = tda.methods.from_config({"method": method, **kw}, task, **runtime)
    scores = est.fit(train).scores(queries)
    if method == "trak":
        info["damping"] = est.dampings_[0]
    return scores, info


def _traker_matrix(num_params: int, k: int) -> torch.Tensor:
    """The ``[P, k]`` Gaussian matrix of traker's ``BasicProjector`` (seed 0, model 0): its
    column blocks, each generated from its own seed, side by side."""
    from trak.projectors import BasicProjector, ProjectionType

    proj = BasicProjector(
        grad_dim=num_params,
        proj_dim=k,
        seed=0,
        proj_type=ProjectionType.normal,
        device="cpu",
        dtype=torch.float32,
    )
    blocks = []
    for i, state in enumerate(proj.generator_states):
        proj.generate_sketch_matrix(state)
        width = min(proj.block_size, k - i * proj.block_size)
        blocks.append(proj.proj_matrix[:, :width].clone())
    return torch.cat(blocks, dim=1)
