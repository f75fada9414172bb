"""K-FAC and EK-FAC: Kronecker-factored Gauss-Newton curvature, layer by layer.

**Which matrix.** The generalised Gauss-Newton (GGN) matrix of the *mean* training loss,
``GGN = (1/N) sum_i J_i^T Lambda_i J_i`` (``J_i`` the Jacobian of the model output,
``Lambda_i`` the Hessian of the per-example loss in output space), restricted to its
layer-diagonal blocks. Its expectation over the ``C`` output directions is taken *exactly*
(no label sampling) by back-propagating the columns of a square root
``Lambda_i = L_i L_i^T``. It is not the empirical Fisher.

**Factors** (per layer, ``a`` the layer input with a column of ones appended when the bias is
attributed, ``g_c`` the back-propagated column ``c`` at the layer's output):
``A = E_i[(1/T) sum_t a a^T]`` and ``G = E_i[sum_c sum_t g_c g_c^T]`` over the ``T`` positions
(1 for a plain Linear; output positions for Conv2d, whose ``a`` are input patches; tokens
for sequences); the block is ``G (x) A`` in the row-major order of the ``[out, in(+1)]``
weight. ``nn.Embedding`` is a Linear layer on one-hot inputs: its ``A`` is diagonal (token
frequencies) and its weight ``[vocab, dim]`` is the transpose. ``nn.LayerNorm`` parameters
(elementwise) get the exact GGN diagonal.

**EK-FAC** keeps the eigenbases of ``A`` and ``G`` and refits the eigenvalues to the exact
GGN diagonal in that basis: ``s[o, j] = E_i[sum_c (U_G^T M_ic U_A)[o, j]^2]`` with ``M_ic``
example ``i``'s pseudo-gradient. **Damping** ``lam`` is added to every block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tdakit.errors import ConfigError, NumericalError, require
from tdakit.features.layers import capture, rows_per_example
from tdakit.preconditioners.base import Curvature, Preconditioner, check_damping
from tdakit.preconditioners.exact import as_dtype, dtype_name
from tdakit.preconditioners.kfac_factors import (
    a_factor,
    embedding_sq,
    layer_grads,
    layer_inputs,
    loss_hessian_roots,
    sum_sq_rotated,
)
from tdakit.preconditioners.operators import forward_ad_kernels
from tdakit.task import Task


@dataclass
class KFACLayer:
    """One layer's factors; ``weight``/``bias`` are flat slices ``(start, stop)`` or None.

    ``kind``: ``"linear"`` (Linear, Conv2d), ``"embedding"`` (diagonal ``A``) or
    ``"diagonal"`` (LayerNorm: the exact GGN diagonal, in ``eigenvalues``).
    """

    name: str
    module: nn.Module
    weight: tuple[int, int] | None
    bias: tuple[int, int] | None
    kind: str = "linear"
    A: torch.Tensor | None = None  # [in(+1), in(+1)], or [vocab] for embeddings
    G: torch.Tensor | None = None
    QA: torch.Tensor | None = None  # None = identity (embeddings)
    QG: torch.Tensor | None = None
    eigenvalues: torch.Tensor | None = None  # curvature in the Kronecker basis
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def out_features(self) -> int:
        m = self.module
        if isinstance(m, nn.Linear):
            return m.out_features
        if isinstance(m, nn.Embedding):
            return m.embedding_dim
        return m.out_channels

    def gather(self, V: torch.Tensor) -> torch.Tensor:
        """Flat rows ``[n, P]`` -> this layer's ``[n, out, in(+1)]`` matrices."""
        n, out = len(V), self.out_features
        if self.kind == "embedding":
            a, b = self.weight  # type: ignore[misc]
            return V[:, a:b].reshape(n, -1, out).transpose(1, 2)
        parts = []
        if self.weight is not None:
            parts.append(V[:, self.weight[0] : self.weight[1]].reshape(n, out, -1))
        if self.bias is not None:
            parts.append(V[:, self.bias[0] : self.bias[1]].reshape(n, out, 1))
        return torch.cat(parts, dim=2)

    def scatter(self, M: torch.Tensor, out: torch.Tensor) -> None:
        """Write ``[n, out, in(+1)]`` matrices back into the flat rows of ``out``."""
        n = len(M)
        if self.kind == "embedding":
            a, b = self.weight  # type: ignore[misc]
            out[:, a:b] = M.transpose(1, 2).reshape(n, -1)
            return
        if self.weight is not None:
            a, b = self.weight
            out[:, a:b] = M[:, :, : (b - a) // self.out_features].reshape(n, -1)
        if self.bias is not None:
            out[:, self.bias[0] : self.bias[1]] = M[:, :, -1]

    def slots(self) -> list[tuple[int, int]]:
        return [s for s in (self.weight, self.bias) if s is not None]


class KFAC(Preconditioner):
    """Kronecker-factored inverse GGN ``(G + lam I)^{-1}`` of the mean training loss.

    Every attributed parameter must belong to an ``nn.Linear``, ``nn.Conv2d`` (groups=1),
    ``nn.Embedding`` or ``nn.LayerNorm`` called once per forward pass.

    Args:
        compute_dtype: dtype of the factors and their eigendecompositions (float64).
    """

    name = "kfac"
    curvatures = ("ggn",)
    eigen_correction = False

    def __init__(self, *, compute_dtype: torch.dtype | str = torch.float64) -> None:
        self.compute_dtype = as_dtype(compute_dtype)
        self.layers_: list[KFACLayer] = []
        self.n_train_ = 0

    def options(self) -> dict:
        return {"compute_dtype": dtype_name(self.compute_dtype)}

    # --- fitting --------------------------------------------------------------------------
    def fit(self, curvature: Curvature) -> KFAC:
        """Estimate the factors (and EK-FAC eigenvalues) streaming over the training data."""
        require(
            curvature.kind in self.curvatures,
            f"{type(self).__name__} models the GGN; got curvature={curvature.kind!r}.",
        )
        self._curvature = curvature
        task = curvature.task
        next(iter(curvature.source.batches(task, curvature.batch_size)))  # resolve params
        self.layers_ = find_layers(task)
        self._verified = False
        self.num_params = task.num_params
        sums: dict[str, list[Any]] = {layer.name: [0.0, 0.0] for layer in self.layers_}
        for acts, grads in self._passes(curvature, "K-FAC factors"):
            for layer in self.layers_:
                a, gs = acts[layer.name], [g[layer.name] for g in grads]
                s = sums[layer.name]
                if layer.kind == "diagonal":
                    s[0] += sum(g.pow(2).sum(0) for g in gs)
                    continue
                s[0] += a_factor(layer, a)
                s[1] += sum(torch.einsum("bto,btp->op", g, g) for g in gs)
        N = self.n_train_ = len(curvature.source)
        for layer in self.layers_:
            s = sums[layer.name]
            if layer.kind == "diagonal":
                layer.eigenvalues = s[0] / N
                continue
            layer.A, layer.G = s[0] / N, s[1] / N
            sG, layer.QG = _eigh(layer.G)
            if layer.kind == "embedding":
                sA, layer.QA = layer.A.clamp_min(0.0), None
            else:
                sA, layer.QA = _eigh(layer.A)
            layer.eigenvalues = sG[:, None] * sA[None, :]
        if self.eigen_correction:
            self._refit_eigenvalues(curvature)
        self.damping_ = check_damping(curvature.resolve())
        for layer in self.layers_:
            layer._cache.clear()
        return self

    def _refit_eigenvalues(self, curvature: Curvature) -> None:
        sums = {layer.name: torch.zeros_like(layer.eigenvalues) for layer in self.layers_}
        for acts, grads in self._passes(curvature, "EK-FAC eigenvalues"):
            for layer in self.layers_:
                if layer.kind == "diagonal":
                    continue
                grots = [g[layer.name] @ layer.QG for g in grads]
                if layer.kind == "embedding":
                    for grot in grots:
                        sums[layer.name] += embedding_sq(grot, acts[layer.name], layer)
                    continue
                a = acts[layer.name] @ layer.QA
                if a.shape[1] == 1:  # one position: (g a^T)^2 = g^2 (a^2)^T, sum over c first
                    g2 = sum(gr[:, 0].pow(2) for gr in grots)
                    sums[layer.name] += g2.T @ a[:, 0].pow(2)
                else:
                    for grot in grots:
                        sums[layer.name] += sum_sq_rotated(grot, a)
        for layer in self.layers_:
            if layer.kind != "diagonal":
                layer.eigenvalues = sums[layer.name] / self.n_train_

    def _passes(self, curvature: Curvature, desc: str):
        task = curvature.task
        total = -(-len(curvature.source) // curvature.batch_size)
        it = curvature.source.batches(task, curvature.batch_size)
        for b in tqdm(it, total=total, desc=desc, disable=not curvature.progress, leave=False):
            yield self._capture(task, b.inputs, b.targets)

    def _capture(self, task: Task, inputs, targets: torch.Tensor):
        """Layer inputs and, per column ``c`` of the loss Hessian's square root, the
        back-propagated output gradients of every layer (per example, float64)."""
        params = {n: p.detach().requires_grad_(True) for n, p in task.params().items()}
        layout = [(layer.name, layer.module, None, None) for layer in self.layers_]

        def run() -> torch.Tensor:
            return task.outputs(params, inputs)

        with torch.enable_grad(), forward_ad_kernels():
            got = capture(layout, len(targets), run)
        if got is None:
            raise ConfigError(
                "K-FAC needs every attributed layer to run exactly once per forward pass on "
                "the whole batch, with one output row per example (no weight sharing, no "
                "functional use of the weights, no layer applied to something shared by the "
                "batch such as a position embedding of arange(T)). Restrict "
                "Task(params=[...]) to such layers."
            )
        out, inputs_, outputs = got
        roots = loss_hessian_roots(task, out.detach(), targets)
        targets_ = [outputs[layer.name] for layer in self.layers_]
        if not self._verified:  # rows of every layer output must belong to one example each
            losses = task._loss(out, targets)
            used = [t for t in targets_ if t.requires_grad]
            deltas = torch.autograd.grad(losses.sum(), used, retain_graph=True)
            require(
                rows_per_example(losses, used, deltas, retain_graph=True),
                "K-FAC needs every attributed layer's output rows to belong to one example each "
                "(a layer applied to something shared by the batch, such as a position "
                "embedding of arange(T), breaks that). Leave such layers out of "
                "Task(params=[...]).",
            )
            self._verified = True
        cols = roots.permute(2, 0, 1).reshape(roots.shape[2], *out.shape)
        gs = torch.autograd.grad(
            out, targets_, grad_outputs=cols, is_grads_batched=True, allow_unused=True
        )
        dt = self.compute_dtype
        acts = {L.name: layer_inputs(L, inputs_[L.name], dt) for L in self.layers_}
        grads = [
            {
                L.name: layer_grads(L, None if g is None else g[c], t, inputs_[L.name], dt)
                for L, g, t in zip(self.layers_, gs, targets_, strict=True)
            }
            for c in range(len(cols))
        ]
        return acts, grads

    # --- applying ------------------------------------------------------------------------
    def apply(self, G: torch.Tensor) -> torch.Tensor:
        """``(F + lambda I)^-1 G`` for rows ``G`` ``[n, P]`` in ``task.param_names`` order."""
        self._check_fitted(self.n_train_ > 0)
        require(
            G.ndim == 2 and G.shape[1] == self.num_params,
            f"apply needs rows of length {self.num_params} (the attributed parameters, "
            f"flattened in task.param_names order), got shape {tuple(G.shape)}.",
        )
        out = torch.empty_like(G)
        for layer in self.layers_:
            QA, QG, inv = _inverse_parts(layer, float(self.damping_), G.dtype, G.device)
            if layer.kind == "diagonal":
                flat = torch.cat([G[:, a:b] for a, b in layer.slots()], 1) * inv
                offset = 0
                for a, b in layer.slots():
                    out[:, a:b] = flat[:, offset : offset + b - a]
                    offset += b - a
                continue
            M = layer.gather(G)
            M = QG.T @ M if QA is None else QG.T @ M @ QA
            M = QG @ (M * inv)
            layer.scatter(M if QA is None else M @ QA.T, out)
        return out


class EKFAC(KFAC):
    """K-FAC with the eigenvalues refitted in the Kronecker eigenbasis (George et al. 2018)."""

    name = "ekfac"
    eigen_correction = True


def find_layers(task: Task) -> list[KFACLayer]:
    """The K-FAC layers of the task's attributed parameters, or a clear error."""
    modules = dict(task.model.named_modules())
    shapes = {n: p.shape for n, p in task.params().items()}
    kinds = (nn.Linear, nn.Conv2d, nn.Embedding, nn.LayerNorm)
    ok_names = [n for n, m in modules.items() if isinstance(m, kinds)]
    layers: dict[str, KFACLayer] = {}
    offset = 0
    for name in task.param_names:
        owner, _, leaf = name.rpartition(".")
        module = modules[owner]
        size = shapes[name].numel()
        if not isinstance(module, kinds) or leaf not in ("weight", "bias"):
            raise ConfigError(
                f"K-FAC supports nn.Linear, nn.Conv2d, nn.Embedding and nn.LayerNorm, but the "
                f"attributed parameter {name!r} belongs to {owner or 'the model itself'} "
                f"({type(module).__name__}). Restrict the task with Task(model, ..., "
                f"params=[...]) to supported layers, e.g. params={ok_names[:8]}."
            )
        if isinstance(module, nn.Conv2d):
            require(
                module.groups == 1 and module.padding_mode == "zeros",
                f"K-FAC supports Conv2d with groups=1 and padding_mode='zeros'; layer "
                f"{owner!r} has groups={module.groups}, padding_mode={module.padding_mode!r}. "
                "Leave it out of Task(params=[...]).",
            )
        kind = {nn.Embedding: "embedding", nn.LayerNorm: "diagonal"}.get(type(module), "linear")
        if isinstance(module, nn.Embedding):
            require(
                module.max_norm is None and not module.sparse and not module.scale_grad_by_freq,
                f"K-FAC does not support Embedding {owner!r} with max_norm, sparse=True or "
                "scale_grad_by_freq=True; leave it out of Task(params=[...]).",
            )
        layer = layers.setdefault(owner, KFACLayer(owner, module, None, None, kind))
        setattr(layer, leaf, (offset, offset + size))
        offset += size
    return list(layers.values())


def _eigh(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, Q = torch.linalg.eigh(0.5 * (M + M.T))
    return s.clamp_min(0.0), Q


def _inverse_parts(layer: KFACLayer, damping: float, dtype, device):
    key = (dtype, device, damping)
    if key not in layer._cache:
        ev = layer.eigenvalues
        assert ev is not None
        # relative floor (as for the exact and Arnoldi solvers): rounding leaves ~eps^2
        # instead of 0 in null directions, and 1/(that) would amplify noise without bound
        floor = torch.finfo(ev.dtype).eps * ev.numel() * float(ev.abs().max())
        if float(ev.min()) + damping <= floor:
            raise NumericalError(
                f"K-FAC layer {layer.name!r} has (numerically) zero curvature in some "
                f"directions (smallest eigenvalue {float(ev.min()):.3g}, largest "
                f"{float(ev.max()):.3g}) and the damping λ={damping:.3g} does not lift it: "
                "use damping > 0 (or tda.solvers.Relative(c))."
            )
        move = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
        layer._cache[key] = (
            move(layer.QA),
            move(layer.QG),
            (1.0 / (layer.eigenvalues + damping)).to(device, dtype),
        )
    return layer._cache[key]
