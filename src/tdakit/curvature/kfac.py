"""K-FAC and EK-FAC: Kronecker-factored Gauss-Newton curvature for Linear and Conv2d layers.

**Which matrix.** K-FAC here approximates the generalised Gauss-Newton (GGN) matrix of the
*mean* training loss, ``GGN = (1/N) sum_i J_i^T Lambda_i J_i`` with ``J_i`` the Jacobian of
the model output and ``Lambda_i`` the Hessian of the per-example loss in output space
(for cross-entropy ``diag(p) - p p^T``, for ``mse`` the identity), restricted to its
layer-diagonal blocks. For cross-entropy and mse this GGN equals the true Fisher; we
compute the Fisher's expectation over model-sampled labels *exactly* (no sampling, no
seed) by back-propagating the ``C`` columns of a square root ``Lambda_i = L_i L_i^T``.
It is not the empirical Fisher (outer products of the gradients at the observed labels).

**Factors** (per layer, ``a`` the layer input with a column of ones appended when the bias
is attributed, ``g_c`` the back-propagated column ``c`` at the layer's pre-activation
output): ``A = E_i[a a^T]`` and ``G = E_i[sum_c g_c g_c^T]``; the block is ``G (x) A`` in
the row-major order of the ``[out, in(+1)]`` weight. For a single example and a Linear
layer this block is exact. Conv2d (Grosse & Martens 2016, KFC): ``a`` are the unfolded
input patches; ``A`` *averages* patch outer products over output positions, ``G`` *sums*
gradient outer products over positions (cross-position terms are dropped). Linear layers
applied to sequences ``[B, T, in]`` are treated the same way.

**EK-FAC** (George et al. 2018) keeps the eigenbases of ``A`` and ``G`` but refits the
eigenvalues to the exact GGN diagonal in that basis:
``s[o, j] = E_i[sum_c (U_G^T M_ic U_A)[o, j]^2]`` with ``M_ic`` example ``i``'s
(pseudo-)gradient of the weight matrix. **Damping** ``lambda`` is added to the whole
Kronecker block: ``apply`` returns ``U_G [(U_G^T V U_A) / (s + lambda)] U_A^T`` per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import hessian, vmap
from tqdm.auto import tqdm

from tdakit.errors import TdakitError, require
from tdakit.features.layers import conv_patches
from tdakit.inputs import batches, check_float_dtype
from tdakit.task import Task

SUPPORTED = (nn.Linear, nn.Conv2d)
_CHUNK_ELEMENTS = 2**24  # cap on [chunk, out, in] per-example gradient tensors (EK-FAC)


@dataclass
class KFACLayer:
    """One layer's factors; ``weight``/``bias`` are flat slices (start, stop) or ``None``."""

    name: str
    module: nn.Module
    weight: tuple[int, int] | None
    bias: tuple[int, int] | None
    A: torch.Tensor | None = None
    G: torch.Tensor | None = None
    QA: torch.Tensor | None = None
    QG: torch.Tensor | None = None
    eigenvalues: torch.Tensor | None = None  # [out, in(+1)] curvature in the Kronecker basis
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def out_features(self) -> int:
        m = self.module
        return m.out_features if isinstance(m, nn.Linear) else m.out_channels

    def gather(self, V: torch.Tensor) -> torch.Tensor:
        """Flat rows ``[n, P]`` -> this layer's ``[n, out, in(+1)]`` matrices."""
        n, out = len(V), self.out_features
        parts = []
        if self.weight is not None:
            parts.append(V[:, self.weight[0] : self.weight[1]].reshape(n, out, -1))
        if self.bias is not None:
            parts.append(V[:, self.bias[0] : self.bias[1]].reshape(n, out, 1))
        return torch.cat(parts, dim=2)

    def scatter(self, M: torch.Tensor, out: torch.Tensor) -> None:
        """Write ``[n, out, in(+1)]`` matrices back into the flat rows of ``out``."""
        n = len(M)
        if self.weight is not None:
            a, b = self.weight
            out[:, a:b] = M[:, :, : (b - a) // self.out_features].reshape(n, -1)
        if self.bias is not None:
            out[:, self.bias[0] : self.bias[1]] = M[:, :, -1]


class KFAC:
    """Kronecker-factored inverse curvature ``(F + lambda I)^-1`` of the mean training loss.

    Args:
        task: the model and loss; every attributed parameter must be the weight or bias
            of an ``nn.Linear`` or ``nn.Conv2d`` (groups=1) that is called once per forward.
        damping: ``lambda > 0``, absolute, added to the curvature of the mean loss.
        eigen_correction: ``True`` for EK-FAC (refit eigenvalues), ``False`` for K-FAC.
        batch_size, progress: batching of the passes over the data and a tqdm bar.
    """

    def __init__(
        self,
        task: Task,
        *,
        damping: float,
        eigen_correction: bool = False,
        batch_size: int = 128,
        progress: bool = False,
    ) -> None:
        require(isinstance(task, Task), f"KFAC needs a tdakit.Task, got {type(task).__name__}.")
        require(
            isinstance(damping, (int, float))
            and not isinstance(damping, bool)
            and damping > 0
            and damping < float("inf"),
            f"damping must be a positive finite number (lambda added to the curvature), "
            f"got {damping!r}.",
        )
        require(batch_size > 0, f"batch_size must be positive, got {batch_size}.")
        self.task, self.damping = task, float(damping)
        self.eigen_correction, self.batch_size, self.progress = (
            bool(eigen_correction),
            batch_size,
            progress,
        )
        self.layers = _find_layers(task)
        self.num_params = task.num_params
        self.n_train = 0

    # --- fitting --------------------------------------------------------------------------
    def fit(self, X: torch.Tensor, y: torch.Tensor) -> KFAC:
        """Estimate the factors (and EK-FAC eigenvalues) on the training set."""
        require(len(X) > 0 and len(X) == len(y), "fit needs matching, non-empty X and y.")
        check_float_dtype(X, self.task.dtype, "train")
        stats = {layer.name: [0.0, 0.0] for layer in self.layers}
        for _, _, a, gs in self._passes(X, y, "K-FAC factors"):
            for layer in self.layers:
                acts, grads = a[layer.name], [g[layer.name] for g in gs]
                T = acts.shape[1]
                stats[layer.name][0] += torch.einsum("bti,btj->ij", acts, acts) / T
                stats[layer.name][1] += sum(torch.einsum("bto,btp->op", g, g) for g in grads)
        N = len(X)
        self.n_train = N
        for layer in self.layers:
            layer.A, layer.G = (s / N for s in stats[layer.name])
            sA, layer.QA = _eigh(layer.A)
            sG, layer.QG = _eigh(layer.G)
            layer.eigenvalues = sG[:, None] * sA[None, :]
            layer._cache.clear()
        if self.eigen_correction:
            self._refit_eigenvalues(X, y)
        return self

    def _refit_eigenvalues(self, X: torch.Tensor, y: torch.Tensor) -> None:
        sums = {layer.name: torch.zeros_like(layer.eigenvalues) for layer in self.layers}
        for _, _, a, gs in self._passes(X, y, "EK-FAC eigenvalues"):
            for layer in self.layers:
                acts = a[layer.name] @ layer.QA
                grots = [g[layer.name] @ layer.QG for g in gs]
                if acts.shape[1] == 1:  # one position: (g a^T)^2 = g^2 (a^2)^T, sum over c first
                    g2 = sum(gr[:, 0].pow(2) for gr in grots)
                    sums[layer.name] += g2.T @ acts[:, 0].pow(2)
                else:
                    for grot in grots:
                        sums[layer.name] += _sum_sq_rotated_grads(grot, acts)
        for layer in self.layers:
            layer.eigenvalues = sums[layer.name] / len(X)
            layer._cache.clear()

    def _passes(self, X: torch.Tensor, y: torch.Tensor, desc: str):
        task = self.task
        it = batches(X, y, self.batch_size, task.device, task.dtype)
        total = -(-len(X) // self.batch_size)
        for start, stop, xb, yb in tqdm(it, total=total, desc=desc, disable=not self.progress):
            acts, grads = self._capture(xb, yb)
            yield start, stop, acts, grads

    def _capture(self, xb: torch.Tensor, yb: torch.Tensor):
        """Layer inputs ``{name: [B, T, in(+1)]}`` and, per output column ``c`` of the loss
        Hessian's square root, back-propagated output gradients ``{name: [B, T, out]}``."""
        params = {n: p.detach().requires_grad_(True) for n, p in self.task.params().items()}
        inputs: dict[str, list] = {layer.name: [] for layer in self.layers}
        outputs: dict[str, list] = {layer.name: [] for layer in self.layers}

        def hook(name):
            def fn(_module, args, out):
                inputs[name].append(args[0].detach())
                outputs[name].append(out)
                return out.clone()  # later in-place ops must not alter the captured output

            return fn

        handles = [layer.module.register_forward_hook(hook(layer.name)) for layer in self.layers]
        try:
            with torch.enable_grad():
                out = self.task.outputs(params, xb)
        finally:
            for h in handles:
                h.remove()
        for layer in self.layers:
            calls = len(outputs[layer.name])
            require(
                calls == 1,
                f"K-FAC layer {layer.name!r} ran {calls} times in one forward pass; K-FAC "
                "supports layers called exactly once through their forward (no weight sharing, "
                "no functional use of the weights). Restrict Task(params=[...]) to other layers.",
            )
        roots = _loss_hessian_roots(self.task, out.detach(), yb)
        targets = [outputs[layer.name][0] for layer in self.layers]
        acts = {layer.name: _layer_inputs(layer, inputs[layer.name][0]) for layer in self.layers}
        # all K columns in one vmapped backward pass
        cols = roots.permute(2, 0, 1).reshape(roots.shape[2], *out.shape)
        gs = torch.autograd.grad(
            out, targets, grad_outputs=cols, is_grads_batched=True, allow_unused=True
        )
        grads = [
            {
                layer.name: _layer_grads(layer, None if g is None else g[c], t)
                for layer, g, t in zip(self.layers, gs, targets, strict=True)
            }
            for c in range(len(cols))
        ]
        return acts, grads

    # --- applying ------------------------------------------------------------------------
    def apply(self, G: torch.Tensor) -> torch.Tensor:
        """``(F + lambda I)^-1 G`` for rows ``G`` ``[n, P]`` (or one vector ``[P]``) in the
        flat order of ``task.param_names``."""
        require(self.n_train > 0, "KFAC is not fitted: call .fit(X, y) on the training data first.")
        single = G.ndim == 1
        V = G.reshape(1, -1) if single else G
        require(
            V.ndim == 2 and V.shape[1] == self.num_params,
            f"apply needs vectors of length {self.num_params} (the attributed parameters, "
            f"flattened in task.param_names order), got shape {tuple(G.shape)}.",
        )
        out = torch.empty_like(V)
        for layer in self.layers:
            QA, QG, inv = _inverse_parts(layer, self.damping, V.dtype, V.device)
            M = layer.gather(V)
            M = QG.T @ M @ QA
            layer.scatter(QG @ (M * inv) @ QA.T, out)
        return out.reshape(G.shape)


def _find_layers(task: Task) -> list[KFACLayer]:
    modules = dict(task.model.named_modules())
    shapes = {n: p.shape for n, p in task.params().items()}
    linear = [n for n, m in modules.items() if isinstance(m, SUPPORTED)]
    layers: dict[str, KFACLayer] = {}
    offset = 0
    for name in task.param_names:
        owner, _, leaf = name.rpartition(".")
        module = modules[owner]
        size = shapes[name].numel()
        if not isinstance(module, SUPPORTED) or leaf not in ("weight", "bias"):
            raise TdakitError(
                f"K-FAC supports only nn.Linear and nn.Conv2d weights and biases, but the "
                f"attributed parameter {name!r} belongs to {owner or 'the model itself'} "
                f"({type(module).__name__}). Restrict the task to Linear/Conv2d layers with "
                f"Task(model, ..., params=[...]), e.g. params={linear}."
            )
        if isinstance(module, nn.Conv2d):
            require(
                module.groups == 1 and module.padding_mode == "zeros",
                f"K-FAC supports Conv2d with groups=1 and padding_mode='zeros'; layer "
                f"{owner!r} has groups={module.groups}, padding_mode={module.padding_mode!r}. "
                "Leave it out of Task(params=[...]).",
            )
        layer = layers.setdefault(owner, KFACLayer(owner, module, None, None))
        setattr(layer, leaf, (offset, offset + size))
        offset += size
    return list(layers.values())


def _eigh(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, Q = torch.linalg.eigh(0.5 * (M + M.T))
    return s.clamp_min(0.0), Q


def _inverse_parts(layer: KFACLayer, damping: float, dtype, device):
    key = (dtype, device)
    if key not in layer._cache:
        assert layer.QA is not None and layer.QG is not None and layer.eigenvalues is not None
        layer._cache[key] = (
            layer.QA.to(device, dtype),
            layer.QG.to(device, dtype),
            (1.0 / (layer.eigenvalues + damping)).to(device, dtype),
        )
    return layer._cache[key]


def output_hessians(loss, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example Hessians ``[B, K, K]`` (float64) of ``loss(outputs, targets) -> [B]``
    with respect to the ``K`` flattened model outputs of each example."""
    shape = out.shape[1:]

    def single(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return loss(o.reshape(1, *shape), t.unsqueeze(0))[0]

    H = vmap(hessian(single))(out.reshape(len(out), -1).to(torch.float64), y)
    return 0.5 * (H + H.transpose(1, 2))


def _loss_hessian_roots(task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``L_i`` ``[B, K, K]`` with ``L_i L_i^T`` the output-space loss Hessian (PSD part)."""
    w, V = torch.linalg.eigh(output_hessians(task._loss, out, y))
    return (V * w.clamp_min(0.0).sqrt().unsqueeze(1)).to(out.dtype)


def _layer_inputs(layer: KFACLayer, x: torch.Tensor) -> torch.Tensor:
    """``[B, T, in(+1)]`` in float64: patches for Conv2d, positions flattened for Linear."""
    m = layer.module
    a = conv_patches(x, m) if isinstance(m, nn.Conv2d) else x.reshape(len(x), -1, x.shape[-1])
    a = a.to(torch.float64)
    ones = torch.ones(*a.shape[:2], 1, dtype=a.dtype, device=a.device)
    if layer.weight is None:
        return ones
    return torch.cat([a, ones], dim=2) if layer.bias is not None else a


def _layer_grads(layer: KFACLayer, g: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """Output gradients ``[B, T, out]`` in float64 (zeros if the output is unused)."""
    g = torch.zeros_like(out) if g is None else g
    if isinstance(layer.module, nn.Conv2d):
        g = g.flatten(2).transpose(1, 2)
    return g.reshape(len(g), -1, g.shape[-1]).to(torch.float64)


def _sum_sq_rotated_grads(grot: torch.Tensor, arot: torch.Tensor) -> torch.Tensor:
    """``sum_b (sum_t grot[b, t] arot[b, t]^T)^2`` elementwise ``[out, in]``, chunked."""
    B, _, o = grot.shape
    step = max(1, _CHUNK_ELEMENTS // max(1, o * arot.shape[2]))
    total = torch.zeros(o, arot.shape[2], dtype=grot.dtype, device=grot.device)
    for s in range(0, B, step):
        M = torch.einsum("bto,bti->boi", grot[s : s + step], arot[s : s + step])
        total += M.pow(2).sum(0)
    return total
