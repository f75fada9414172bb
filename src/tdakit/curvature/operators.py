"""Curvature of the MEAN training loss as an operator on flat parameter vectors.

``kind`` selects the curvature:

- ``"hessian"``: ``H = (1/N) sum_i d^2 l_i / d theta^2`` (forward-over-reverse ``jvp(grad)``);
- ``"ggn"``: Gauss-Newton ``G = (1/N) sum_i J_i^T H_i J_i`` with ``J_i`` the Jacobian of the
  model outputs and ``H_i`` the Hessian of the loss w.r.t. the outputs (``jvp`` then ``vjp``);
- ``"fisher"``: empirical Fisher ``F = (1/N) sum_i g_i g_i^T`` of per-example gradients.

Flat vectors follow ``task.param_names`` order. ``mv`` takes ``[P]``, ``mm`` takes
``[P, r]`` (``vmap`` over the columns); both sum over batches of the data and divide by N.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.func import grad, hessian, jacrev, jvp, vjp, vmap
from tqdm.auto import tqdm

from tdakit.errors import TdakitError, require
from tdakit.features.grads import flatten_blocks, per_example_grads
from tdakit.features.projection import Projector
from tdakit.inputs import batches, check_float_dtype, fingerprint_tensors
from tdakit.task import Params, Task

KINDS = ("hessian", "ggn", "fisher")
MAX_EXPLICIT_PARAMS = 5000


def check_kind(kind: str) -> str:
    require(kind in KINDS, f"Unknown curvature {kind!r}; use one of {KINDS}.")
    return kind


def unflatten(flat: torch.Tensor, params: Params) -> Params:
    """Split ``[..., P]`` into ``{name: [..., *shape]}`` in the order of ``params``."""
    out, start = {}, 0
    lead = flat.shape[:-1]
    for name, p in params.items():
        out[name] = flat[..., start : start + p.numel()].reshape(*lead, *p.shape)
        start += p.numel()
    require(start == flat.shape[-1], f"Expected vectors of length {start}, got {flat.shape[-1]}.")
    return out


def check_explicit_size(num_params: int, limit: int, what: str = "explicit curvature") -> None:
    """Refuse to build a ``[P, P]`` matrix for large ``P``, saying what to do instead."""
    require(
        num_params <= limit,
        f"The {what} would be a {num_params} x {num_params} matrix, above the limit of "
        f"{limit} parameters. Use solver='cg', 'lissa', 'arnoldi', 'kfac' or 'ekfac', or "
        "solver='projected' with projection=k, or attribute fewer parameters "
        "(Task(..., params='last_layer')); raise max_explicit_params only if you have the memory.",
    )


class CurvatureOperator:
    """Products with the curvature of the mean training loss over ``(X, y)``.

    Args:
        task: model and loss; the curvature is taken w.r.t. ``task.param_names``.
        X, y: the training data (kept on their device, moved batch by batch).
        kind: ``"hessian"``, ``"ggn"`` or ``"fisher"``.
        batch_size: examples per batch in each pass over the data.
        progress: show a progress bar for each pass (off by default: solvers make many).
    """

    def __init__(
        self,
        task: Task,
        X: torch.Tensor,
        y: torch.Tensor,
        kind: str = "hessian",
        *,
        batch_size: int = 128,
        progress: bool = False,
    ) -> None:
        check_float_dtype(X, task.dtype, "training")
        require(len(X) == len(y) and len(X) > 0, "The curvature needs a non-empty (X, y).")
        self.task, self.X, self.y = task, X, y
        self.kind = check_kind(kind)
        self.batch_size, self.progress = batch_size, progress
        self.params = task.params()
        self.num_params = task.num_params
        self.num_examples = len(X)

    # --- products -------------------------------------------------------------------------
    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """``C v`` for a flat vector ``[P]``."""
        return self.mm(v.reshape(-1, 1)).reshape(-1)

    def mm(self, V: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """``C V`` for ``V`` of shape ``[P, r]``; with ``indices``, the mean over that subset."""
        require(
            V.ndim == 2 and V.shape[0] == self.num_params,
            f"Expected a block of vectors [P={self.num_params}, r], got {tuple(V.shape)}.",
        )
        rows = V.T.to(device=self.task.device, dtype=self.task.dtype)
        X, y = (self.X, self.y) if indices is None else (self.X[indices], self.y[indices])
        out = torch.zeros_like(rows)
        for xb, yb in self._batches(X, y):
            out += self._batch_rows(rows, xb, yb)
        return (out / len(X)).T

    def _batches(self, X: torch.Tensor, y: torch.Tensor):
        task = self.task
        it = batches(X, y, self.batch_size, task.device, task.dtype)
        total = -(-len(X) // self.batch_size)
        desc = f"{self.kind} products"
        for _, _, xb, yb in tqdm(
            it, total=total, desc=desc, disable=not self.progress, leave=False
        ):
            yield xb, yb

    def _batch_rows(self, rows: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Sum over the batch of the curvature times each row of ``rows`` ``[r, P]``."""
        task, params = self.task, self.params
        if self.kind == "fisher":
            G = flatten_blocks(per_example_grads(task, xb, yb, "train"))
            return (rows @ G.T) @ G
        tangents = unflatten(rows, params)
        if self.kind == "hessian":
            grad_fn = grad(lambda p: task.losses(p, xb, yb).sum())

            def one(v: Params) -> Params:
                return jvp(grad_fn, (params,), (v,))[1]

        else:
            outputs = _output_fn(task, xb)
            out, pullback = vjp(outputs, params)
            loss_grad = grad(lambda o: task._loss(o, yb).sum())

            def one(v: Params) -> Params:
                Jv = jvp(outputs, (params,), (v,))[1]
                HJv = jvp(loss_grad, (out,), (Jv,))[1]
                return pullback(HJv)[0]

        return flatten_blocks(vmap(one)(tangents))

    # --- explicit and projected matrices --------------------------------------------------
    def matrix(self, max_params: int = MAX_EXPLICIT_PARAMS, chunk: int = 256) -> torch.Tensor:
        """The explicit ``[P, P]`` curvature (symmetrised); refuses ``P > max_params``."""
        P = self.num_params
        check_explicit_size(P, max_params, f"explicit {self.kind} matrix")
        if self.kind != "hessian":
            return self.projected(None)
        eye = torch.eye(P, dtype=self.task.dtype, device=self.task.device)
        M = torch.cat([self.mm(eye[:, a : a + chunk]) for a in range(0, P, chunk)], dim=1)
        return 0.5 * (M + M.T)

    def projected(self, projector: Projector | None) -> torch.Tensor:
        """GGN or empirical Fisher in projected coordinates: ``[k, k]`` (``[P, P]`` if None).

        GGN: ``(1/N) sum_i (R^T J_i^T) H_i (J_i R)`` from projected tangent features;
        Fisher: ``Phi^T Phi / N`` from projected per-example gradients.
        """
        require(
            self.kind in ("ggn", "fisher"),
            f"A projected curvature is available for 'ggn' and 'fisher', not {self.kind!r}.",
        )
        task, params = self.task, self.params
        M = None
        for xb, yb in self._batches(self.X, self.y):
            if self.kind == "fisher":
                blocks = per_example_grads(task, xb, yb, "train")
                Phi = _project(blocks, projector)
                part = Phi.T @ Phi
            else:
                Phi, Hout = tangent_features(task, params, xb, yb, projector)
                part = torch.einsum("bci,bcd,bdj->ij", Phi, Hout, Phi)
            M = part if M is None else M + part
        assert M is not None
        M = M / self.num_examples
        return 0.5 * (M + M.T)

    # --- diagonal estimates ---------------------------------------------------------------
    def hutchinson_mean_diagonal(self, samples: int = 32, seed: int = 0) -> float:
        """Unbiased estimate of ``trace(C) / P`` from Rademacher probes ``z^T C z``."""
        require(samples > 0, f"hutchinson samples must be positive, got {samples}.")
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        Z = (2 * torch.randint(0, 2, (self.num_params, samples), generator=gen) - 1).to(
            device=self.task.device, dtype=self.task.dtype
        )
        return float((Z * self.mm(Z)).sum() / (samples * self.num_params))


def _output_fn(task: Task, xb: torch.Tensor) -> Callable[[Params], torch.Tensor]:
    def outputs(p: Params) -> torch.Tensor:
        return task.outputs(p, xb)

    return outputs


def _project(blocks: Params, projector: Projector | None) -> torch.Tensor:
    return flatten_blocks(blocks) if projector is None else projector.project(blocks)


def tangent_features(
    task: Task, params: Params, xb: torch.Tensor, yb: torch.Tensor, projector: Projector | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example (projected) Jacobians ``[B, C, d]`` and output Hessians ``[B, C, C]``."""

    def single_out(p: Params, x: torch.Tensor) -> torch.Tensor:
        return task.outputs(p, x.unsqueeze(0)).reshape(-1)

    def single_loss(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return task._loss(o.unsqueeze(0), t.unsqueeze(0)).squeeze(0)

    blocks = vmap(jacrev(single_out), in_dims=(None, 0))(params, xb)  # {n: [B, C, *shape]}
    B, C = len(xb), next(iter(blocks.values())).shape[1]
    flat = {n: b.reshape(B * C, *b.shape[2:]) for n, b in blocks.items()}
    Phi = _project(flat, projector).reshape(B, C, -1)
    outs = task.outputs(params, xb).reshape(B, C)
    Hout = vmap(hessian(single_loss))(outs, yb)
    return Phi, Hout.reshape(B, C, C)


class MatrixProjector(Projector):
    """An explicit projection matrix ``R`` ``[P, k]``: features are ``g^T R``.

    Useful for tests and for orthonormal bases (e.g. ``k = P`` with a random orthogonal
    ``R``, where projected-exact influence equals exact influence for any damping).
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        require(
            isinstance(matrix, torch.Tensor) and matrix.ndim == 2 and matrix.shape[1] > 0,
            "An explicit projection must be a 2-D tensor [num_params, k].",
        )
        require(bool(torch.isfinite(matrix).all()), "The projection matrix contains NaN or inf.")
        super().__init__(int(matrix.shape[1]), kind="gaussian", seed=0)
        self.matrix = matrix
        self._digest = fingerprint_tensors(matrix)

    @property
    def config(self) -> dict:
        return {"dim": self.dim, "kind": "matrix", "fingerprint": self._digest}

    def project(self, blocks: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = flatten_blocks(blocks)
        if flat.shape[1] != self.matrix.shape[0]:
            raise TdakitError(
                f"The projection matrix has {self.matrix.shape[0]} rows but the gradients have "
                f"{flat.shape[1]} entries; pass a [num_params, k] matrix for the task's params."
            )
        return flat @ self.matrix.to(device=flat.device, dtype=flat.dtype)


def as_projector(projection: Projector | torch.Tensor | int | None, seed: int, kind: str):
    """``None``, a dimension, a :class:`Projector` or an explicit ``[P, k]`` matrix."""
    if isinstance(projection, torch.Tensor):
        return MatrixProjector(projection)
    if projection is None or isinstance(projection, Projector):
        return projection
    require(
        isinstance(projection, int) and not isinstance(projection, bool) and projection > 0,
        f"projection must be a positive int, a Projector or a [P, k] tensor, got {projection!r}.",
    )
    return Projector(int(projection), kind=kind, seed=seed)  # type: ignore[arg-type]


def layer_slices(task: Task) -> tuple[list[str], list[slice]]:
    """Group the flat parameter vector by owning module (``net.0.weight`` + ``net.0.bias``)."""
    names: list[str] = []
    slices: list[slice] = []
    start = 0
    for name, p in task.params().items():
        owner = name.rsplit(".", 1)[0] if "." in name else name
        if names and names[-1] == owner:
            slices[-1] = slice(slices[-1].start, start + p.numel())
        else:
            names.append(owner)
            slices.append(slice(start, start + p.numel()))
        start += p.numel()
    return names, slices


def mean_sq_by_layer(T: torch.Tensor, slices: Sequence[slice]) -> list[float]:
    """``mean(g^2)`` over examples and coordinates of each layer's block of ``T`` ``[N, P]``."""
    return [float(T[:, s].pow(2).mean()) for s in slices]
