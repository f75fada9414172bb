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
with the same scale `s` as tdakit's; dattri's TRAK divides gradients by √P (and scales its
matrix by 1/√k like tdakit), so its Gram damping is tdakit's / P, while traker's Gaussian
matrix has unit entries, so its `lambda_reg` is tdakit's × k / P; kronfluence adds its
damping to the eigenvalues of the mean Fisher = λ.

**Measurement.** Each (library, method, case) runs in its own process. torch's lazy
imports (torch.func, autograd.functional, linalg) are triggered on a toy problem first and
the library is imported before timing; the wall time covers fit + scoring of all queries;
the peak memory is the kernel's peak RSS (VmHWM, reset right before the timed call) minus
the RSS right before it. tdakit uses batch_size 1000 (the peers get full-batch or
1000-example batches as well). A full run takes ~28 min on 2 cores, about 10 of them in the
slowest peer configurations (dattri's DataInf, LiSSA and CG on Fashion-MNIST, captum's
explicit Hessian on all parameters); `--only` and `--cases` select subsets.
"""

NOTES: dict[str, str] = {
    "graddot": """
**Grad-Dot / TracIn.** Identical math (gradient of the training loss dotted with the
gradient of the query loss, one checkpoint, learning rate 1): Spearman 1. tdakit computes
the per-example training gradients once (nn.Linear fast path, batch 1000) and scores with
one matrix product. It keeps the `[N, P]` training gradients (1 GB on Fashion-MNIST,
P = 50,890); captum's TracInCP peaks at twice that. On digits the whole call takes a few
hundredths of a second, so the time ratio there (0.50-0.65 over three runs) is
per-call overhead and noise rather than a bottleneck.
""",
    "graddot_proj": """
**Grad-Dot with projected gradients vs dattri's TracInAttributor (related).** dattri 0.3
always projects TracIn's gradients: its constructor copies `DEFAULT_PROJECTOR_KWARGS`
(512-dim Gaussian) even when `projector_kwargs=None` (and `update`s that module-level dict
in place), so its unprojected path is unreachable. tdakit runs with a 512-dim Gaussian
projection too; the random matrices differ, so the Spearman measures projection noise,
not a difference in method. tdakit's time on digits (0.34 s) is mostly generating the
dense sketch (see TRAK below).
""",
    "graddot_w": """
**Last-layer weight (TracInCPFast).** captum's TracInCPFast uses the closed form of the
last layer's weight gradient (output gradient x layer input) without the bias; tdakit on
`params=["head.weight"]` agrees exactly. Both take about 0.01-0.1 s and a few MiB: the
ratios are fixed per-call overhead and noise, not a bottleneck.
""",
    "exact_last": """
**Exact influence, last layer.** Identical math. dattri forms the Hessian with
`torch.func.hessian` (forward-over-reverse over all P tangents at once: 1 GB on digits,
4.6 GB on Fashion-MNIST for P = 650) and solves; captum forms the Hessian of the summed
loss with `torch.autograd.functional.hessian` and inverts it through an eigendecomposition
(`hessian_reg = N λ`, all eigenpairs kept); tdakit builds the matrix from blocks of
vmapped Hessian-vector products and factorises it in float64. On Fashion-MNIST
(λ = 0.5, strong cancellation) float32 limits the rank agreement: in float64 (model and
data cast) tdakit and captum agree to Spearman 1.0000, and tdakit's (and dattri's) float32
scores agree with the float64 ones to 0.9898 — the 0.982 of the table is two float32
computations with different rounding. On digits tdakit's peak (67 MiB: the stored
per-example gradients, the identity blocks and float32/float64 copies of the matrix) is
twice captum's 34 MiB — small in absolute terms; see the next row for the cause.
""",
    "exact": """
**Exact influence, all parameters (P = 4,810).** Same math as captum's
NaiveInfluenceFunction with every eigenpair kept; tdakit is ~10x faster but its peak is
~1.1x captum's: `ExactSolver.__init__` builds `0.5 * (A + A.T) + λ I` in float64 with
several full `[P, P]` temporaries (185 MB each here: the float64 copy, `A + A.T`, the
scaled sum, the identity, `λ I`, the sum) and `CurvatureOperator.matrix` holds the float32
matrix, its column blocks, the identity and the symmetrised copy at once. Cholesky reads
only one triangle, so a single float64 copy with `A.diagonal().add_(λ)` would do.
""",
    "cg": """
**Conjugate gradient.** Same linear system `(H + λI) x = g_q`. dattri runs exactly
`max_iter` iterations without a tolerance test (at 100 iterations one query's residual hit
zero and its scores became NaN, so 50 are used; CG converges in < 50 here) and solves each
query separately under `vmap` (10 at a time: 100 at a time needed 17 GB on digits). tdakit
solves blocks of 64 queries together, one data pass per iteration for the whole block,
and stops each column at relative residual 1e-6. 100 queries make two blocks (64 + 36);
`solve_block=128` (one block) took 2.9 s instead of 3.3 s on digits.
""",
    "lissa": """
**LiSSA.** Same recursion, same scale `s`, damping translated (`d = λ / s`), depth 200,
minibatches of 256. dattri draws fresh minibatches for every query (vmap with
`randomness="different"`), tdakit one minibatch sequence shared by all queries: two
Monte-Carlo estimates of the same truncated series. Two tdakit runs with seeds 0 and 1
agree to Spearman 0.895 on digits, the same as tdakit vs dattri (0.899), so the gap is
sampling noise. dattri's `mode="rev-fwd"` fails for (x, y) data (it builds zero tangents
with `torch.zeros(*x[i].shape)` on the data tuple), so its default `rev-rev` is used.
""",
    "arnoldi": """
**Arnoldi.** Same construction: top 50 eigenpairs of the Hessian from a 200-dimensional
Krylov space, damping added to the eigenvalues, the orthogonal complement dropped. The
libraries start from different random vectors (none accepts another's), so they agree as
far as the top 50 have converged (with a 100-dimensional space two tdakit seeds agreed only
to 0.89, with 200 to > 0.99). tdakit's time is the 200 Hessian-vector products over the
training set (forward-over-reverse `jvp(grad)`, vmapped, batches of 1,000). On
digits tdakit takes 0.55x dattri's time (goal 0.5 just missed), on Fashion-MNIST 0.86x:
there dattri's single full-batch double-backward HVP per iteration is about as fast as
tdakit's five batched forward-over-reverse ones, while holding the full-batch graph
(4.6 GB vs tdakit's 1.1 GB, which is mostly the stored `[N, P]` training gradients). One
run under contention from other jobs took 104 s for tdakit; its re-runs took 16-19 s.
""",
    "datainf": """
**DataInf.** Identical formula (per layer, Sherman-Morrison with the same λ): Spearman 1.
tdakit applies it with a few matrix products over the stored training gradients; dattri
loops over training batches with a vmapped per-example update (177 s and 8.7 GB on
Fashion-MNIST). tdakit's 1.9 GB peak there is the `[N, P]` training gradients plus
per-layer copies (`T[:, s].pow(2)` for the squared norms, the column-sliced blocks in
`DataInfSolver.apply`).
""",
    "ekfac": """
**EK-FAC.** Same curvature in expectation, different estimators. tdakit's EK-FAC uses the
exact Fisher/GGN expectation (back-propagates all C columns of a square root of the
output-space loss Hessian; no sampling). kronfluence (default) and dattri (our loss
function samples labels from the model while the factors are fitted) use ONE sampled label
per example, a Monte-Carlo estimate of the same Fisher: two kronfluence runs with sampling
seeds 0 and 1 agree with each other only to Spearman 0.75 on digits, less than each agrees
with tdakit (0.87 / 0.80), so the gap to kronfluence is sampling noise. The digits times
are below 0.2 s for tdakit and dattri (ratio 0.58 at 0.07 s vs 0.13 s: per-call overhead).
dattri agrees less (0.61 / 0.71); one difference in its code is the bias layout
(`IFAttributorEKFAC.transform_test_rep` concatenates the flat weight and bias gradients and
reshapes them to `[out, in+1]`, interleaving rows instead of appending the bias column),
but reordering it left the agreement at 0.616, so the rest was not traced further. Memory
on Fashion-MNIST: tdakit 1.16 GB vs kronfluence 0.61 GB — tdakit's InfluenceFunction keeps
all `[N, P]` training gradients (1 GB) for the final product, kronfluence streams them in
the pairwise scoring.
""",
    "trak": """
**TRAK.** Same estimator (projected margin gradients, `(Φ^T Φ + λI)^-1`, weights `1 - p`,
one model, 512 dims; λ = tdakit's default relative damping, 0.1 x mean diag of `Φ^T Φ`,
passed to the peers in their scale: dattri divides gradients by √P and uses a 1/√k-scaled
matrix (λ / P), traker divides by √P with unit-variance entries (λ k / P)). With k = 512
the preconditioner depends strongly on the random projection: two tdakit runs with
projection seeds 0 and 1 agree only to 0.45 (digits) / 0.22 (Fashion-MNIST), the same as
tdakit vs the peers (traker and dattri share the generator and agree with each other to
1.0000). The same-math check runs tdakit with traker's own matrix (regenerated from its
`BasicProjector` seeds) and agrees to ≥ 0.9999. Memory and time: most of tdakit's peak
(786 MiB vs 230 MiB for traker on Fashion-MNIST; 76 vs 31 MiB on digits) and about 1 s of
its 2.3 s is generating the dense Rademacher sketch: `Projector._sketch` draws int64 bits
(`torch.randint`, 8 bytes per entry) and builds `(2 * bits - 1) / sqrt(k)` through int64
temporaries before the float32 cast — measured alone, the first projection for
P = 50,890, k = 512 adds 594 MiB and takes 0.95 s (Gaussian: 392 MiB, float64 draw), for a
100 MB float32 matrix. traker generates its Gaussian blocks in float32 directly.
""",
    "representer": """
**Representer points (related, not the same math).** dattri follows Yeh et al.'s original
code: it refits the last-layer *weight* (no bias) to the model's own softmax outputs (soft
labels) by gradient descent with backtracking and an early stop at 1/200 of the initial
gradient, and scales α by 1/n². tdakit refits weight and bias (bias as a regularised
column) to the true labels to float64 stationarity (L-BFGS + Newton-CG), which makes the
representer decomposition exact. On digits (94% query accuracy) the rankings agree
closely; on Fashion-MNIST (85%) the soft and true labels differ on more examples and the
agreement drops to 0.82. tdakit's larger peak (131 MiB vs 26 MiB; not profiled) is
presumably its float64 copies: the features and the explicit last-layer Hessian of the
Newton polish.
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
