"""Random projections: seeded, blockwise-consistent, and inner-product preserving."""

from __future__ import annotations

import math

import pytest
import torch

from tdakit.features import Projector, flatten_blocks


def blocks(n: int = 20, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(n, 40, 30, generator=gen, dtype=torch.float64),
        "a.bias": torch.randn(n, 40, generator=gen, dtype=torch.float64),
        "b.weight": torch.randn(n, 10, 40, generator=gen, dtype=torch.float64),
    }


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "sjlt"])
def test_same_seed_same_projection_other_seed_differs(kind: str) -> None:
    b = blocks()
    p1 = Projector(64, kind=kind, seed=3).project(b)
    p2 = Projector(64, kind=kind, seed=3).project(b)
    p3 = Projector(64, kind=kind, seed=4).project(b)
    assert torch.equal(p1, p2)
    assert not torch.allclose(p1, p3)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "sjlt"])
def test_projection_is_linear_and_chunking_invariant(kind: str) -> None:
    b = blocks()
    whole = Projector(32, kind=kind, seed=1).project(b)
    # The sketch is a fixed linear map: projecting a sum is the sum of projections.
    half = {k: v / 2 for k, v in b.items()}
    p = Projector(32, kind=kind, seed=1)
    assert torch.allclose(p.project(half) * 2, whole, atol=1e-12)
    # No cache (regenerated every call) gives the same numbers.
    uncached = Projector(32, kind=kind, seed=1, cache_bytes=0).project(b)
    assert torch.allclose(uncached, whole, atol=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "sjlt"])
def test_inner_products_within_jl_bounds(kind: str) -> None:
    b = blocks(n=12)
    G = flatten_blocks(b)
    k = 2048
    P = Projector(k, kind=kind, seed=0).project(b)
    exact = G @ G.T
    approx = P @ P.T
    norms = G.norm(dim=1)
    # JL: |<Pu,Pv> - <u,v>| <= eps |u||v| with eps ~ c * sqrt(log(n)/k); c=4 is generous
    # for these three sketches yet far tighter than any broken scaling would satisfy.
    eps = 4 * math.sqrt(math.log(len(G) ** 2) / k)
    err = (approx - exact).abs() / torch.outer(norms, norms)
    assert err.max() < eps
    # Norms are preserved on average, unbiasedly (the scaling is right).
    ratio = (P.norm(dim=1) ** 2 / norms**2).mean()
    assert abs(ratio - 1) < 0.05


def test_bad_projection_arguments() -> None:
    from tdakit.errors import TdakitError

    with pytest.raises(TdakitError, match="positive int"):
        Projector(0)
    with pytest.raises(TdakitError, match="Unknown projection kind"):
        Projector(8, kind="fourier")
    with pytest.raises(TdakitError, match="sparsity"):
        Projector(6, kind="sjlt", sparsity=4)
