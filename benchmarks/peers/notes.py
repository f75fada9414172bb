"""Explanations that go into the report: conventions, differences in math, bottlenecks."""

INTRO = """
The same trained models are attributed by tdakit and by peer libraries that implement the
same method, with hyperparameters matched as closely as their APIs allow. The peers are
optional extras of this benchmark, installed only into `.venv-peers` by
`benchmarks/peers/setup.sh`; they are never dependencies of tdakit.

**Conventions translated.** tdakit's scores are `[n_query, n_train]`, positive = the
training example helped the query, influence carries 1/N and its damping λ is added to the
curvature of the MEAN training loss. Spearman correlation is per query (over the training
examples) and is invariant to a positive scale, not to the sign, so every peer's scores are
oriented to tdakit's convention: dattri and traker return `[n_train, n_query]`
(transposed); all compared peers already use "positive = helpful" for these methods (the
loss gradient of the training example dotted with the preconditioned gradient of the query
loss), so no sign was flipped. Damping: dattri's `regularization` is added to the Hessian
of the loss its loss function returns (the mean over the one full batch it is given) = λ;
captum uses the Hessian of the SUM of the losses, so `hessian_reg = N λ` (its scores then
equal tdakit's including the 1/N); dattri's LiSSA iterates
`h ← v + (1 − d) h − H h / s` and returns `h / s`, i.e. `(H + d s)^-1 v`, so `d = λ / s`
with the same scale `s` as tdakit's; traker and dattri's TRAK divide gradients by √P
before projecting, so their Gram damping is tdakit's / P; kronfluence adds its damping to
the eigenvalues of the mean Fisher = λ.

**Measurement.** Each (library, method, case) runs in its own process. torch's lazy
imports (torch.func, autograd.functional, linalg) are triggered on a toy problem first and
the library is imported before timing; the wall time covers fit + scoring of all queries;
the peak memory is the kernel's peak RSS (VmHWM, reset right before the timed call) minus
the RSS right before it. tdakit uses batch_size 1000 (the peers get full-batch or
1000-example batches as well).
"""

NOTES: dict[str, str] = {}

EXCLUDED = """
- **quanda**: requires torchvision, which has no CPU-only wheel on PyPI and would pull a
  CUDA build of torch (GBs); not installed.
- **kronfluence** declares torchvision as a dependency too; `setup.sh` installs it with
  `--no-deps` plus the dependencies it actually imports (accelerate, einops, einconv,
  opt-einsum, safetensors). It imports and runs on CPU without torchvision.
- **dattri IFAttributorExplicit on all parameters** (digits, P = 4,810): dattri forms the
  Hessian with `torch.func.hessian` of the full-batch loss, one vmapped
  forward-over-reverse pass over all P tangents at once; on the last layer (P = 650) this
  already took ~1 GB, on all parameters it would need several GB. It is compared on the
  last layer.
"""
