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
1000-example batches as well). A full run takes ~28 min on 2 idle cores, about 10 of them
in the slowest peer configurations (dattri's DataInf, LiSSA and CG on Fashion-MNIST, captum's
explicit Hessian on all parameters); `--only` and `--cases` select subsets.
"""

NOTES: dict[str, str] = {
    "graddot": """
**Grad-Dot / TracIn.** Identical math (gradient of the training loss dotted with the
gradient of the query loss, one checkpoint, learning rate 1): Spearman 1. tdakit computes
the per-example training gradients once (nn.Linear fast path, batch 1000, written straight
into the `[N, P]` feature matrix) and scores with one matrix product. It keeps the `[N, P]`
training gradients (1 GB on Fashion-MNIST, P = 50,890); captum's TracInCP peaks at twice
that. On digits the whole call takes a few hundredths of a second, so the time ratio there
is per-call overhead and noise rather than a bottleneck.
""",
    "graddot_proj": """
**Grad-Dot with projected gradients vs dattri's TracInAttributor (related).** dattri 0.3
always projects TracIn's gradients: its constructor copies `DEFAULT_PROJECTOR_KWARGS`
(512-dim Gaussian) even when `projector_kwargs=None` (and `update`s that module-level dict
in place), so its unprojected path is unreachable. tdakit runs with a 512-dim Gaussian
projection too; the random matrices differ, so the Spearman measures projection noise,
not a difference in method. Most of tdakit's time is generating and applying the dense
`[P, 512]` Gaussian sketch (drawn in float32, per parameter block).
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
computations with different rounding. On digits tdakit's peak (about 67 MiB) is the
vmapped Hessian-vector products of one 256-column block of the identity over the 1,000
examples (`CurvatureOperator.matrix` → `mm`: `[256, 1000, 64]` float32 activations), about
twice captum's — small in absolute terms.
""",
    "exact": """
**Exact influence, all parameters (P = 4,810).** Same math as captum's
NaiveInfluenceFunction with every eigenpair kept; tdakit is ~10x faster. Its peak:
`CurvatureOperator.matrix` holds the float32 `[P, P]` identity, the column blocks of
Hessian-vector products and their concatenation and symmetrised copy (93 MB each here), and
`CholeskyInverse` one float64 copy (185 MB, damped in place on the diagonal) and its
float64 factor. With the previous engine (`ExactSolver`: `0.5 * (A + A.T) + λ I` through
several float64 temporaries) the peak was 1,017 MiB.
""",
    "cg": """
**Conjugate gradient.** Same linear system `(H + λI) x = g_q`. dattri runs exactly
`max_iter` iterations without a tolerance test (at 100 iterations one query's residual hit
zero and its scores became NaN, so 50 are used; CG converges in < 50 here) and solves each
query separately under `vmap` (10 at a time: 100 at a time needed 17 GB on digits). tdakit
(`tda.solvers.CG(tol=1e-6, max_iter=50)`, default `block=128`) solves the 100 queries as
one block, one data pass per iteration for the whole block, and stops each column at
relative residual 1e-6.
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
Fashion-MNIST dattri's single full-batch double-backward HVP per iteration is about as
fast as tdakit's five batched forward-over-reverse ones, while holding the full-batch graph
(4.6 GB vs tdakit's 1.1 GB, which is mostly the stored `[N, P]` training gradients). Every
pass of the new engine re-reads the training source batch by batch, and `Task.split`
checks each batch's inputs for NaN/inf (`torch.isfinite(x).all()` on `[1000, 784]`) on
every pass: 1,000 checks for the 200 products, about a quarter of the cost of one
Hessian-vector product on Fashion-MNIST (see "this engine against the previous engine").
""",
    "datainf": """
**DataInf.** Identical formula (per layer, Sherman-Morrison with the same λ): Spearman 1.
tdakit applies it with a few matrix products over the stored training gradients; dattri
loops over training batches with a vmapped per-example update (177 s and 8.7 GB on
Fashion-MNIST). tdakit's peak there is the `[N, P]` training gradients (1 GB) plus the
per-layer products in `tda.solvers.DataInf.apply` (the squared row norms come from
`torch.linalg.vector_norm`, without a `[N, width]` temporary; the previous engine's
`T[:, s].pow(2)` copies took its peak to 1.9 GB).
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
`BasicProjector` seeds) and agrees to ≥ 0.9999. Memory and time: `Projector._sketch`
draws the dense Rademacher sketch in float32 directly (a `[P, 512]` matrix, 100 MB on
Fashion-MNIST); the previous engine's published numbers (786 MiB on Fashion-MNIST) were
taken before that change, when the sketch went through int64 temporaries.
""",
    "representer": """
**Representer points (related, not the same math).** dattri follows Yeh et al.'s original
code: it refits the last-layer *weight* (no bias) to the model's own softmax outputs (soft
labels) by gradient descent with backtracking and an early stop at 1/200 of the initial
gradient, and scales α by 1/n². tdakit refits weight and bias (bias as a regularised
column) to the true labels to float64 stationarity (`RepresenterPoints._refit`: damped
Newton steps with the explicit last-layer Gauss-Newton matrix from the trained weights
when it has at most 4,096 entries, else L-BFGS then Newton-CG), which makes the
representer decomposition exact. On digits (94% query accuracy) the rankings agree
closely; on Fashion-MNIST (85%) the soft and true labels differ on more examples and the
agreement drops to 0.82. tdakit's larger peak is in `_gauss_newton` (its
`einsum("nab,ni,nj->aibj")` over chunks of examples, float64) and the float64 copies of
the refit (features `alpha_i ⊗ h_i`, the explicit last-layer Hessian and its factor).
""",
}

ENGINE = """
**Paired check against the previous engine (load-robust).** The machine was shared with
other jobs during every run of this page (load 4-9 on 2 cores), so the wall times above
exaggerate. The previous engine (commit 1e98cdc, unpacked with `git archive` into a
separate directory and put first on `PYTHONPATH`) and this engine were therefore also run
back to back on the same saved cases with the same configurations and the same
measurement (`child.py`'s `measure`), comparing process CPU time (single-threaded,
`torch.set_num_threads(1)`) and peak RSS
(the largest over all paired runs: one or two single-threaded and, for the digits rows
that vary most, two or three more with two threads; after the memory fixes below):

| case | method | CPU s, previous | CPU s, now | ratio | MiB, previous | MiB, now | ratio |
|---|---|---:|---:|---:|---:|---:|---:|
| digits | Grad-Dot | 0.15 | 0.18 | 1.18 | 24 | 26 | 1.08 |
| digits | Grad-Dot, projected 512 | 0.20 | 0.20 | 1.01 | 39 | 37 | 0.94 |
| digits | Grad-Dot, last-layer weight | 0.13 | 0.14 | 1.04 | 6 | 5 | 0.85 |
| digits | exact influence, last layer | 0.29 | 0.34 | 1.16 | 85 | 88 | 1.04 |
| digits | exact influence, all parameters | 11.12 | 10.00 | 0.90 | 969 | 809 | 0.84 |
| digits | CG | 4.39 | 4.28 | 0.97 | 356 | 366 | 1.03 |
| digits | LiSSA | 8.02 | 7.54 | 0.94 | 123 | 122 | 0.99 |
| digits | Arnoldi | 1.70 | 1.75 | 1.03 | 46 | 47 | 1.02 |
| digits | DataInf | 0.22 | 0.22 | 1.03 | 36 | 32 | 0.90 |
| digits | EK-FAC | 0.23 | 0.24 | 1.08 | 48 | 46 | 0.96 |
| digits | TRAK | 0.26 | 0.26 | 1.02 | 39 | 38 | 0.97 |
| digits | representer points | 0.27 | 0.47 | 1.74 | 49 | 61 | 1.24 |
| fmnist | Grad-Dot | 1.18 | 1.20 | 1.02 | 998 | 1016 | 1.02 |
| fmnist | Grad-Dot, projected 512 | 2.67 | 2.66 | 1.00 | 312 | 313 | 1.00 |
| fmnist | Grad-Dot, last-layer weight | 0.21 | 0.21 | 0.98 | 26 | 19 | 0.72 |
| fmnist | exact influence, last layer | 0.64 | 0.72 | 1.12 | 105 | 100 | 0.95 |
| fmnist | CG | 31.88 | 33.72 | 1.06 | 1545 | 1478 | 0.96 |
| fmnist | LiSSA | 28.44 | 28.59 | 1.01 | 1244 | 1238 | 1.00 |
| fmnist | Arnoldi | 18.18 | 21.61 | 1.19 | 1106 | 1109 | 1.00 |
| fmnist | DataInf | 3.19 | 2.43 | 0.76 | 1931 | 1092 | 0.57 |
| fmnist | EK-FAC | 2.06 | 2.07 | 1.00 | 1145 | 1155 | 1.01 |
| fmnist | TRAK | 2.93 | 2.86 | 0.98 | 315 | 323 | 1.02 |
| fmnist | representer points | 0.53 | 1.35 | 2.55 | 122 | 123 | 1.02 |

Peaks of a few tens of MiB vary by ±3-5 MiB between runs of the same code, and the
peaks of the Hessian-vector-product solvers by ±50 MiB (the previous engine itself gave
264-356 MiB for CG on digits and 77-85 MiB for the last-layer Hessian in these paired
runs, against the 223 and 67 MiB published above): the published previous-engine peaks
are samples of that spread, which is why CG, LiSSA and the last-layer Hessian on digits
show more memory in the table above but not in the paired runs. The CPU time of the
sub-second digits rows is dominated by fixed per-fit costs.

Causes of what got slower or bigger, and what was done:

- **Training features in memory** (every gradient method, influence included):
  `build_train_features` (`tdakit/features/matrix.py`) featurised the first batch into a
  tensor of its own and copied it into the `[N, d]` matrix, then copied every later batch
  in, so the peak held the matrix plus one or two batches (digits Grad-Dot: 40 MiB instead
  of 23; Fashion-MNIST: 1,367 MiB instead of 999). Fixed: when the first batch is the
  whole set it is kept as the matrix; otherwise it is freed before the next batch, and
  gradient methods (`GradientFeatures._feature_width` / `_featurize_into` in
  `tdakit/methods/gradient.py`, used by `FeatureMethod._fit`) write each batch straight
  into the matrix as the previous engine did (1,016 MiB).
- **DataInf**: `DataInf.apply` (`tdakit/preconditioners/datainf.py`) took the squared row
  norms as `Tl.pow(2).sum(1)`, an `[N, width]` temporary per layer, while the queries and
  accumulators were alive (digits 41 MiB instead of 36). Fixed with
  `torch.linalg.vector_norm(Tl, dim=1).square()` (no temporary): now below the previous
  engine (digits 32 MiB, Fashion-MNIST 1.09 GB instead of 1.93 GB).
- **Arnoldi, CG and the explicit Hessian on Fashion-MNIST (1.06-1.2x CPU time)**: every
  pass of `CurvatureOperator.mm` re-reads the training `Source` and `Task.split`
  (`tdakit/task.py`) checks every batch's floating inputs with
  `torch.isfinite(x).all()` — for `[1000, 784]` inputs about a quarter of the cost of the
  Hessian-vector product itself (one product over the 5,000 examples: 95 ms single-threaded
  against 68-70 ms with the previous engine, which checked `X` once). Not changed here
  (`task.py` is outside this benchmark's remit). The fix: screen with one reduction and
  run the exact test only when it fails — `if not math.isfinite(float(t.sum())):
  require(bool(torch.isfinite(t).all()), ...)` (NaN or inf always make the sum NaN/inf;
  an overflowing sum of finite values only triggers the exact test). With that screen
  monkeypatched in, one product costs 70-78 ms, Arnoldi on Fashion-MNIST 19.4 CPU s
  instead of 21.6-22.3 (previous engine 17.8-18.2), the last-layer Hessian 0.62-0.71
  instead of 0.72-0.75 (previous 0.64-0.66).
- **Representer points (1.7x / 2.5x CPU time, +24% peak on digits)**: commit 4dd21fd
  ("Newton refit for small representer layers") makes `RepresenterPoints._refit`
  (`tdakit/methods/representer.py`) run up to 50 damped Newton steps from the trained
  weights whenever the last layer has at most `DIRECT_NEWTON_MAX` = 4,096 weights, each
  rebuilding the explicit Gauss-Newton matrix (`_gauss_newton`:
  `einsum("nab,ni,nj->aibj")` in float64, where the peak is) and factoring it
  (`CholeskyInverse`) plus a backtracking line search, instead of L-BFGS followed by at
  most five such steps. The commit before it (96a884e) measured like the previous engine
  (digits 0.26 CPU s, 45 MiB). Not changed here: it is a deliberate change of the refit
  (restoring L-BFGS + at most five Newton steps for small layers, or building the
  Gauss-Newton matrix once per step with fewer float64 copies, would remove it).
- The sub-0.1 s rows (Grad-Dot on digits, DataInf, EK-FAC, TRAK on digits) carry fixed
  per-fit costs of the new engine — the first batch of every new task verifies that each
  layer's rows are per example (one more backward pass, `layer_grads(verify=True)`), and
  each batch is checked as above — of a few milliseconds.
"""

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
