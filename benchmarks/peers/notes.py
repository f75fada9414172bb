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

NOTES: dict[str, str] = {
    "graddot": """
**Grad-Dot / TracIn.** Identical math (gradient of the training loss dotted with the
gradient of the query loss, one checkpoint, learning rate 1): Spearman 1. tdakit computes
the per-example training gradients once (vmapped, batch 1000) and scores with one matrix
product; it keeps the `[N, P]` training gradients (1 GB on Fashion-MNIST: P = 50,890), which
captum's TracInCP also materialises per batch and in its scoring.
""",
    "graddot_proj": """
**Grad-Dot with projected gradients vs dattri's TracInAttributor.** dattri 0.3 always
projects TracIn's gradients: its constructor copies `DEFAULT_PROJECTOR_KWARGS` (512-dim
Gaussian) even when `projector_kwargs=None` (and `update`s that module-level dict in place),
so the unprojected path is unreachable. tdakit is run with a 512-dim Gaussian projection
too; the two random matrices differ, so the Spearman here measures projection noise, not a
difference in method (two tdakit runs with projection seeds 0 and 1 agree to a similar
degree). Marked "related" for that reason.
""",
    "graddot_w": """
**Last-layer weight (TracInCPFast).** captum's TracInCPFast uses the closed form of the
last layer's weight gradient (outer product of the output gradient and the layer input),
without the bias; tdakit is run on `params=["head.weight"]` and agrees exactly. At a few
hundredths of a second the comparison is dominated by fixed per-call overhead.
""",
    "exact_last": """
**Exact influence, last layer.** Identical math. dattri forms the Hessian with
`torch.func.hessian` (forward-over-reverse over all P tangents at once: 1 GB on digits,
4.6 GB on Fashion-MNIST for P = 650) and solves; captum forms the Hessian of the summed
loss with `torch.autograd.functional.hessian` and inverts it through a float32
eigendecomposition (`hessian_reg = N λ`, all eigenpairs kept); its float32 path is the
small loss of agreement on Fashion-MNIST, where the summed Hessian over 5,000 examples
has a large dynamic range. tdakit forms the matrix from blocks of vmapped
Hessian-vector products and factorises it in float64 (Cholesky).
""",
    "exact": """
**Exact influence, all parameters (P = 4,810).** Same math as captum's
NaiveInfluenceFunction with every eigenpair kept. tdakit is ~8x faster but its peak memory
is ~1.1x captum's: `ExactSolver.__init__` builds `0.5 * (A + A.T) + λ I` in float64 with
several full `[P, P]` temporaries (185 MB each here) and `CurvatureOperator.matrix` keeps the
float32 matrix, its symmetrised copy and the identity used for the column blocks at the same
time (see the report of issues found).
""",
    "cg": """
**Conjugate gradient.** Same linear system `(H + λI) x = g_q`. dattri runs exactly
`max_iter` iterations without a tolerance test (at 100 iterations one query's residual hit
exactly zero and its scores became NaN, so 50 iterations are used here; CG converges in
< 50 on digits) and solves each query separately under `vmap` (10 at a time: 100 at a time
needed 17 GB). tdakit solves blocks of 64 queries together, one data pass per iteration for
the whole block, and stops each column at relative residual 1e-6.
""",
    "lissa": """
**LiSSA.** Same recursion, same scale `s`, damping translated (`d = λ / s`), depth 200 and
minibatches of 256. dattri draws fresh minibatches for every query (vmap with
`randomness="different"`), tdakit one minibatch sequence shared by all queries, so the two
are different Monte-Carlo estimates of the same truncated series. dattri's `mode="rev-fwd"`
fails for (x, y) data (it builds zero tangents with `torch.zeros(*x[i].shape)` on the data
tuple), so its default `rev-rev` is used.
""",
    "arnoldi": """
**Arnoldi.** Same construction: top 50 eigenpairs of the Hessian from a 200-dimensional
Krylov space, damping added to the eigenvalues, orthogonal complement dropped. The
libraries start from different random vectors (none accepts another's), so their Ritz
vectors agree only as far as the top 50 have converged (with a 100-dimensional space the
agreement between two tdakit seeds was only 0.89; with 200 it is > 0.99). tdakit's
time is dominated by the 200 Hessian-vector products over the training set
(forward-over-reverse `jvp(grad)` in batches of 1,000).
""",
    "datainf": """
**DataInf.** Identical formula (per layer, Sherman-Morrison with the same λ): Spearman 1.
tdakit applies it with a few matrix products over the stored training gradients; dattri
loops over training batches with a vmapped per-example update. tdakit's peak on
Fashion-MNIST (~1.9 GB) is the `[N, P]` training gradients plus per-layer copies
(`T[:, s].pow(2)` for the squared norms and the column-sliced blocks in `apply`).
""",
    "ekfac": """
**EK-FAC.** Same curvature in expectation, different estimators. tdakit's EK-FAC uses the
exact Fisher/GGN expectation: it back-propagates all C columns of a square root of the
output-space loss Hessian (no sampling). kronfluence (default) and dattri (our loss
function samples the labels from the model while the factors are fitted) use ONE sampled
label per example, a Monte-Carlo estimate of the same Fisher: two kronfluence runs with
sampling seeds 0 and 1 agree with each other only to Spearman 0.75 on digits, less than
either agrees with tdakit (0.87 / 0.80), so the gap is sampling noise. dattri agrees less
(0.61); one difference in its code is the bias layout (`IFAttributorEKFAC.transform_test_rep`
concatenates the flat weight and bias gradients and reshapes them to `[out, in+1]`, which
interleaves rows instead of appending the bias column), but reordering it did not change
the agreement (0.616), so the remaining gap was not traced further.
""",
    "trak": """
**TRAK.** Same estimator (projected margin gradients, `(Φ^T Φ + λI)^-1`, weights `1 - p`,
one model, 512 dims, λ = tdakit's automatic damping passed to the peers as λ / P because they
divide gradients by √P). With k = 512 < N = 1,000 the preconditioner depends strongly on the
random projection: two tdakit runs with projection seeds 0 and 1 agree only to 0.45, the same
as tdakit vs dattri, so the low Spearman of the main rows is projection noise. The
same-math check runs tdakit with traker's own projection matrix (regenerated from traker's
`BasicProjector` with the same seed) and agrees to > 0.99. traker is given a one-block
`BasicProjector` (its default CPU projector regenerates 100-column blocks of the matrix
for every batch) and `use_half_precision=False`.
""",
    "representer": """
**Representer points (related, not the same math).** dattri follows Yeh et al.'s original
code: it refits the last-layer *weight* (no bias) to the model's own softmax outputs (soft
labels) by gradient descent with backtracking and an early stop at 1/200 of the initial
gradient, and scales α by 1/n². tdakit refits weight and bias (bias as a regularised
column) to the true labels to float64 stationarity (L-BFGS + Newton-CG), which makes the
representer decomposition exact. The rankings still agree closely.
""",
}

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
