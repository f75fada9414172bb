"""Greedy subset attribution under a Gaussian posterior, with low-rank updates.

The chain rule ``I(S + {j}) = I(S) + I_S({j})`` makes each greedy step exact: the gain of a
candidate is its single-example information under the posterior with ``S`` already removed
(information loss) or added (information gain). After a pick ``j`` the inverse precision
changes by a rank-``C`` term ``s Z_j K_j Z_j^T`` (``s = +1`` removal, ``-1`` addition). Every
inner product is kept in whitened coordinates ``w = L^-1 x`` of the base precision, with the
picks' whitened directions ``zeta_p``; each pick costs one pass over the candidates
(``O(N k C^2)``), so ``k`` picks cost ``O(k N d)``: no ``N x N`` matrix is ever formed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

from tdakit.preconditioners.gp import information

# (start, stop, W [b, k, C]): whitened training blocks (w.r.t. the base precision)
WhitenedBlocks = Callable[[], Iterator[tuple[int, int, torch.Tensor]]]


class Selection(NamedTuple):
    """``indices [k]`` in pick order, their marginal ``gains [k]`` (nats) and ``total``."""

    indices: torch.Tensor
    gains: torch.Tensor
    total: float


def greedy_select(
    wq: torch.Tensor,
    blocks: WhitenedBlocks,
    row: Callable[[int], torch.Tensor],
    n: int,
    k: int,
    sign: int,
    extra_noise: float = 0.0,
) -> Selection:
    """Pick ``k`` training examples greedily for one query.

    Args:
        wq: the whitened query ``[k_dim, C*]``.
        blocks: whitened training blocks; ``row(i)`` gives example ``i``'s ``[k_dim, C]``.
        n: number of training examples.
        sign: ``+1`` information loss (remove from the posterior), ``-1`` information gain
            (add to the base, usually the prior).
        extra_noise: ``sigma^2`` added to the query's covariance (observation noise).
    """
    dt = wq.dtype
    Cq = wq.shape[1]
    eye_q = torch.eye(Cq, dtype=dt, device=wq.device)
    sigma = wq.T @ wq + extra_noise * eye_q
    S_parts, U_parts = [], []
    for _, _, W in blocks():
        W = W.to(dt)
        S_parts.append(W.transpose(1, 2) @ W)
        U_parts.append(torch.einsum("kc,bkd->bcd", wq, W))
    S, U = torch.cat(S_parts), torch.cat(U_parts)
    chosen = torch.zeros(n, dtype=torch.bool, device=S.device)
    zetas: list[tuple[torch.Tensor, torch.Tensor]] = []  # (zeta_p [k_dim, C], K_p [C, C])
    picks, gains = [], []
    for _ in range(k):
        free = (~chosen).nonzero().squeeze(1)  # chosen rows may no longer be invertible
        g = torch.full((n,), float("-inf"), dtype=dt, device=S.device)
        g[free] = information(S[free], U[free], torch.linalg.inv(sigma), sign)
        j = int(torch.argmax(g))
        picks.append(j)
        gains.append(float(g[j]))
        chosen[j] = True
        Wj = row(j).to(dt)
        zeta = Wj.clone()
        for z, K in zetas:
            zeta += sign * z @ (K @ (z.T @ Wj))
        eye_c = torch.eye(S.shape[-1], dtype=dt, device=S.device)
        K = torch.linalg.inv(eye_c - sign * S[j])
        Uj = U[j].clone()
        for start, stop, W in blocks():
            T = torch.einsum("kc,bkd->bcd", zeta, W.to(dt))  # B_j^T A_S^-1 B_i
            S[start:stop] += sign * T.transpose(1, 2) @ K @ T
            U[start:stop] += sign * (Uj @ K) @ T
        sigma = sigma + sign * Uj @ K @ Uj.T
        zetas.append((zeta, K))
    return Selection(torch.tensor(picks), torch.tensor(gains, dtype=dt), float(sum(gains)))
