"""Curvature of the MEAN training loss as an operator on flat parameter vectors, streamed
over the training data batch by batch (nothing of size ``[N, P]`` is ever held).

``kind`` selects the curvature:

- ``"hessian"``: ``H = (1/N) sum_i d^2 l_i / d theta^2`` (forward-over-reverse ``jvp(grad)``);
- ``"ggn"``: Gauss-Newton ``G = (1/N) sum_i J_i^T H_i J_i`` with ``J_i`` the Jacobian of the
  model outputs and ``H_i`` the Hessian of the loss w.r.t. the outputs (``jvp`` then ``vjp``);
- ``"fisher"``: empirical Fisher ``F = (1/N) sum_i g_i g_i^T`` of per-example gradients.

Flat vectors follow ``task.param_names`` order. ``mv`` takes ``[P]``, ``mm`` takes
``[P, r]`` (``vmap`` over the columns). Forward-mode products run with PyTorch's math
attention kernel, the one that supports forward-mode AD.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.func import grad, hessian, jvp, vjp, vmap
from tqdm.auto import tqdm

from tdakit.data.sources import Batch, Source
from tdakit.errors import DataError, require
from tdakit.features.grads import flatten_blocks, per_example_grads
from tdakit.features.projection import Projector
from tdakit.losses import cross_entropy, squared_error
from tdakit.preconditioners.base import KINDS
from tdakit.task import Params, Task

MAX_EXPLICIT_PARAMS = 5000


@contextlib.contextmanager
def forward_ad_kernels() -> Iterator[None]:
    """Attention kernels that support forward-mode AD (the math implementation)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - older torch
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


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
        "tda.solvers.Projected(dim=k), or attribute fewer parameters "
        "(Task(..., params='last_layer')); raise max_params only if you have the memory.",
    )


class CurvatureOperator:
    """Products with the curvature of the mean training loss over a data source.

    Args:
        task: model and loss; the curvature is taken w.r.t. ``task.param_names``.
        source: the training data, streamed batch by batch.
        kind: ``"hessian"``, ``"ggn"`` or ``"fisher"``.
        batch_size: examples per batch in each pass over the data.
        progress: show a progress bar for each pass (off by default: solvers make many).
    """

    def __init__(
        self,
        task: Task,
        source: Source,
        kind: str = "ggn",
        *,
        batch_size: int = 128,
        progress: bool = False,
    ) -> None:
        require(kind in KINDS, f"Unknown curvature {kind!r}; use one of {KINDS}.")
        require(len(source) > 0, "The curvature needs a non-empty training set.", DataError)
        self.task, self.source, self.kind = task, source, kind
        self.batch_size, self.progress = batch_size, progress
        self.num_examples = len(source)
        first = next(iter(source.batches(task, batch_size)))  # resolves and checks the task
        del first
        self.params = task.params()
        self.num_params = task.num_params

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
        source = self.source if indices is None else self.source.subset(indices)
        out = torch.zeros_like(rows)
        for b in self.batches(source):
            out += self._batch_rows(rows, b)
        return (out / len(source)).T

    def batches(self, source: Source | None = None) -> Iterator[Batch]:
        source = self.source if source is None else source
        total = -(-len(source) // self.batch_size)
        it = source.batches(self.task, self.batch_size)
        yield from tqdm(
            it, total=total, desc=f"{self.kind} products", disable=not self.progress, leave=False
        )

    def _batch_rows(self, rows: torch.Tensor, b: Batch) -> torch.Tensor:
        """Sum over the batch of the curvature times each row of ``rows`` ``[r, P]``."""
        task, params = self.task, self.params
        if self.kind == "fisher":
            G = flatten_blocks(per_example_grads(task, b.inputs, b.targets, "train"))
            return (rows @ G.T) @ G
        tangents = unflatten(rows, params)
        if self.kind == "hessian":
            grad_fn = grad(lambda p: task.losses(p, b.inputs, b.targets).sum())

            def one(v: Params) -> Params:
                return jvp(grad_fn, (params,), (v,))[1]

        else:
            outputs = _output_fn(task, b.inputs)
            out, pullback = vjp(outputs, params)
            loss_grad = grad(lambda o: task._loss(o, b.targets).sum())

            def one(v: Params) -> Params:
                Jv = jvp(outputs, (params,), (v,))[1]
                HJv = jvp(loss_grad, (out,), (Jv,))[1]
                return pullback(HJv)[0]

        with forward_ad_kernels():
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
        task = self.task
        M = None
        for b in self.batches():
            if self.kind == "fisher":
                Phi = project(per_example_grads(task, b.inputs, b.targets, "train"), projector)
                part = Phi.T @ Phi
            else:
                Phi, Hout = tangent_features(task, b.inputs, b.targets, projector)
                w, V = torch.linalg.eigh(Hout)  # H = L L^T: one [bC, k]^T [bC, k] product
                L = (V * w.clamp_min(0).sqrt().unsqueeze(1)).to(Phi.dtype)
                rows = (L.transpose(1, 2) @ Phi).reshape(-1, Phi.shape[-1])
                part = rows.T @ rows
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


def _output_fn(task: Task, inputs) -> Callable[[Params], torch.Tensor]:
    def outputs(p: Params) -> torch.Tensor:
        return task.outputs(p, inputs)

    return outputs


def project(blocks: Params, projector: Projector | None) -> torch.Tensor:
    return flatten_blocks(blocks) if projector is None else projector.project(blocks)


class OutputComponent:
    """The objective ``f_c(x)``: output ``c`` of each example (a tangent-feature row)."""

    path_key = "output"

    def __init__(self, task: Task, c: int) -> None:
        self.task, self.c = task, c

    def __call__(self, params: Params, inputs, targets: torch.Tensor) -> torch.Tensor:
        return self.task.outputs(params, inputs).reshape(len(targets), -1)[:, self.c]


def output_hessians(loss, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example Hessians ``[B, K, K]`` (float64) of ``loss(outputs, targets) -> [B]``
    with respect to the ``K`` flattened model outputs of each example."""
    shape = out.shape[1:]
    flat = out.reshape(len(out), -1).to(torch.float64)
    if loss is cross_entropy and out.ndim == 2:  # closed form: diag(p) - p p^T
        p = flat.softmax(1)
        return torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    if loss is squared_error:  # 0.5 |f - y|^2: the identity
        eye = torch.eye(flat.shape[1], dtype=flat.dtype, device=flat.device)
        return eye.expand(len(flat), -1, -1).clone()

    def single(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return loss(o.reshape(1, *shape), t.unsqueeze(0))[0]

    H = vmap(hessian(single))(flat, y)
    return 0.5 * (H + H.transpose(1, 2))


def tangent_features(
    task: Task, inputs, targets: torch.Tensor, projector: Projector | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example (projected) Jacobians ``[B, C, d]`` and output Hessians ``[B, C, C]``."""
    with torch.no_grad():
        out = task.outputs(task.params(), inputs)
    B = len(targets)
    C = out.reshape(B, -1).shape[1]
    rows = [
        project(per_example_grads(task, inputs, targets, OutputComponent(task, c)), projector)
        for c in range(C)
    ]
    Phi = torch.stack(rows, dim=1)
    Hout = output_hessians(task._loss, out.reshape(B, *out.shape[1:]), targets)
    return Phi, Hout


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
        from tdakit.batching import digest

        self._digest = digest(matrix).hexdigest()[:16]

    @property
    def config(self) -> dict:
        return {"dim": self.dim, "kind": "matrix", "fingerprint": self._digest}

    def project(self, blocks: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = flatten_blocks(blocks)
        require(
            flat.shape[1] == self.matrix.shape[0],
            f"The projection matrix has {self.matrix.shape[0]} rows but the gradients have "
            f"{flat.shape[1]} entries; pass a [num_params, k] matrix for the task's params.",
        )
        return flat @ self.matrix.to(device=flat.device, dtype=flat.dtype)


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
