"""``tdakit demo``: train a small MLP on the 8x8 digits, explain a few test predictions with
every available attribution method, and write a self-contained HTML report.

Everything is seeded (data split, initialisation, batch order, query choice, random
projections), runs offline, and takes well under a minute on two CPU cores.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

import tdakit
from tdakit.data import DataSplit
from tdakit.errors import TdakitError, require
from tdakit.storage.fileio import atomic_write
from tdakit.methods.base import AttributionMethod
from tdakit.task import Task

__all__ = [
    "METHODS",
    "DemoContext",
    "DemoResult",
    "MethodEntry",
    "MethodRun",
    "pick_queries",
    "run_demo",
]


@dataclass
class DemoContext:
    """What a method factory may use: the task, training checkpoints and the run's settings."""

    task: Task
    checkpoints: list[dict[str, torch.Tensor]]
    checkpoint_lrs: list[float]
    seed: int
    progress: bool


@dataclass(frozen=True)
class MethodEntry:
    """A method in the demo: ``build(cls, ctx)`` makes it from ``tdakit.<requires>``.

    Optional entries are skipped, with the reason printed and shown in the report, when
    ``tdakit`` has no attribute ``requires`` (the method is not part of this build) or the
    class lacks the ``option`` (attribute name, value) it needs, e.g. a solver.
    """

    name: str
    requires: str
    build: Callable[[type, DemoContext], AttributionMethod]
    description: str
    optional: bool = False
    option: tuple[str, str] | None = None

    def resolve(self) -> tuple[type | None, str]:
        """``(class, "")`` if available, else ``(None, reason)``; required entries raise."""
        cls = getattr(tdakit, self.requires, None)
        if cls is None:
            if not self.optional:
                raise TdakitError(f"tdakit.{self.requires} is missing; the install is broken.")
            return None, f"tdakit.{self.requires} is not available in this version"
        if self.option is not None:
            attr, value = self.option  # looked up on the class, else on its module
            choices = getattr(cls, attr, getattr(sys.modules[cls.__module__], attr, ()))
            if value not in choices:
                return None, f"tdakit.{self.requires} has no {attr[:-1].lower()} {value!r}"
        return cls, ""


def _influence(solver: str, **kw: object) -> Callable[[type, DemoContext], AttributionMethod]:
    def build(cls: type, ctx: DemoContext) -> AttributionMethod:
        return cls(ctx.task, solver=solver, damping=INFLUENCE_DAMPING, progress=ctx.progress, **kw)

    return build


INFLUENCE_DAMPING = 0.01  # absolute λ; 1e-3 leaves the near-singular GGN directions too noisy

METHODS: list[MethodEntry] = [
    MethodEntry(
        "GradDot", "GradDot", lambda cls, c: cls(c.task, progress=c.progress),
        "g_q · g_i: loss gradients at the final weights",
    ),
    MethodEntry(
        "GradCos", "GradCos", lambda cls, c: cls(c.task, progress=c.progress),
        "cosine of the loss gradients (no gradient-norm bias)",
    ),
    MethodEntry(
        "TracIn", "TracIn",
        lambda cls, c: cls(c.task, c.checkpoints, c.checkpoint_lrs, progress=c.progress),
        "Σ_t η_t g_q(θ_t) · g_i(θ_t) over the saved training checkpoints",
    ),
    MethodEntry(
        "Influence (exact GGN)", "InfluenceFunction", _influence("exact", curvature="ggn"),
        "(1/N) g_qᵀ (G + λI)⁻¹ g_i, exact Gauss-Newton matrix, λ=0.01", optional=True,
        option=("SOLVERS", "exact"),
    ),
    MethodEntry(
        "Influence (EK-FAC)", "InfluenceFunction", _influence("ekfac"),
        "influence with eigenvalue-corrected Kronecker-factored GGN, λ=0.01", optional=True,
        option=("SOLVERS", "ekfac"),
    ),
    MethodEntry(
        "DataInf", "InfluenceFunction", _influence("datainf"),
        "closed-form layerwise influence approximation, λ=0.01", optional=True,
        option=("SOLVERS", "datainf"),
    ),
    MethodEntry(
        "TRAK", "TRAK",
        lambda cls, c: cls(c.task, checkpoints=c.checkpoints, seed=c.seed, progress=c.progress),
        "projected margin gradients (k=512), (ΦᵀΦ + λI)⁻¹ kernel, averaged over the "
        "TracIn checkpoints", optional=True,
    ),
    MethodEntry(
        "RepresenterPoints", "RepresenterPoints",
        lambda cls, c: cls(c.task, progress=c.progress),
        "α_i · h_iᵀ h_q from an L2-regularised refit of the last layer", optional=True,
    ),
    MethodEntry(
        "RepresentationSimilarity", "RepresentationSimilarity",
        lambda cls, c: cls(c.task, progress=c.progress),
        "cosine of penultimate-layer representations (label-agnostic)",
    ),
    MethodEntry(
        "RandomBaseline", "RandomBaseline",
        lambda cls, c: cls(c.task, seed=c.seed, progress=c.progress),
        "i.i.d. N(0, 1) scores: the chance level",
    ),
]  # fmt: skip


@dataclass
class MethodRun:
    """One method's outcome in the demo."""

    name: str
    description: str
    scores: torch.Tensor | None = None
    fit_seconds: float = 0.0
    score_seconds: float = 0.0
    skipped: str = ""

    @property
    def status(self) -> str:
        return f"skipped: {self.skipped}" if self.skipped else "ok"


@dataclass
class DemoResult:
    """Everything the report shows (kept together so the report code stays declarative)."""

    config: dict[str, object]
    split: DataSplit
    model: torch.nn.Module
    losses: list[float]
    test_accuracy: float
    query_idx: torch.Tensor
    predictions: torch.Tensor
    probabilities: torch.Tensor
    runs: list[MethodRun] = field(default_factory=list)
    seconds: float = 0.0


def pick_queries(y: torch.Tensor, pred: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` seeded test indices: up to ``max(1, n // 3)`` misclassified ones (if any), the
    rest correctly classified, covering as many different labels as possible."""
    require(n >= 1, f"n_queries must be >= 1, got {n}.")
    require(n <= len(y), f"n_queries={n} exceeds the {len(y)} test examples; pick fewer.")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).tolist()
    wrong = [i for i in order if pred[i] != y[i]][: max(1, n // 3)]
    chosen, labels = list(wrong), {int(y[i]) for i in wrong}
    for distinct in (True, False):
        for i in order:
            if len(chosen) == n:
                break
            if i in chosen or (distinct and int(y[i]) in labels):
                continue
            chosen.append(i)
            labels.add(int(y[i]))
    return torch.tensor(chosen, dtype=torch.long)


def _say(message: str) -> None:
    tqdm.write(message)


def _run_methods(
    entries: Sequence[MethodEntry],
    ctx: DemoContext,
    train: tuple[torch.Tensor, torch.Tensor],
    queries: tuple[torch.Tensor, torch.Tensor],
) -> list[MethodRun]:
    runs = []
    bar = tqdm(entries, desc="methods", disable=not ctx.progress, leave=False)
    for entry in bar:
        bar.set_postfix_str(entry.name)
        run = MethodRun(entry.name, entry.description)
        cls, run.skipped = entry.resolve()
        if cls is None:
            _say(f"skipping {entry.name}: {run.skipped}")
            runs.append(run)
            continue
        start = time.perf_counter()
        method = entry.build(cls, ctx).fit(train)
        run.fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        S = method.scores(queries)
        run.score_seconds = time.perf_counter() - start
        require(
            bool(torch.isfinite(S).all()),
            f"{entry.name} produced non-finite scores; please report this as a bug.",
        )
        run.scores = S.detach().to("cpu", torch.float64)
        runs.append(run)
    bar.close()
    return runs


def run_demo(
    out_dir: str | Path = "tdakit-demo",
    n_queries: int = 6,
    seed: int = 0,
    progress: bool = True,
    *,
    epochs: int = 12,
    hidden: Sequence[int] = (32,),
    n_train: int | None = None,
    n_checkpoints: int = 3,
    top_k: int = 5,
    methods: Sequence[MethodEntry] | None = None,
    device: str | torch.device | None = None,
) -> Path:
    """Run the demo and write ``report.html`` and ``scores.pt`` into ``out_dir``.

    Args:
        out_dir: output directory (created if needed).
        n_queries: how many test predictions to explain.
        seed: seeds the split, model, training, query choice and random methods.
        progress: show progress bars and messages.
        epochs, hidden: training length and MLP hidden widths (smaller = faster).
        n_train: use a seeded subset of this many training examples (``None``: all 1347).
        n_checkpoints: checkpoints kept for TracIn (evenly spaced over training).
        top_k: proponents and opponents shown per method and query.
        methods: the method registry to run (default :data:`METHODS`).
        device: where the model lives (default CPU).

    Returns the path of the report.
    """
    from tdakit.data import load_digits
    from tdakit.models import build_model
    from tdakit.report.demo_report import build_demo_report
    from tdakit.training import train_model

    t0 = time.perf_counter()
    out = Path(out_dir)
    require(
        not out.exists() or out.is_dir(),
        f"The output path {str(out)!r} exists and is not a directory; choose a directory.",
    )
    require(
        isinstance(n_checkpoints, int) and 1 <= n_checkpoints <= epochs,
        f"n_checkpoints must be between 1 and epochs={epochs}, got {n_checkpoints!r}.",
    )
    require(isinstance(top_k, int) and top_k >= 1, f"top_k must be >= 1, got {top_k!r}.")
    dev = torch.device(device) if device is not None else torch.device("cpu")

    split = load_digits(seed=seed)
    require(
        isinstance(n_queries, int) and 1 <= n_queries <= len(split.y_test),
        f"n_queries must be between 1 and the {len(split.y_test)} test examples, "
        f"got {n_queries!r}.",
    )
    X, y = split.X_train, split.y_train
    if n_train is not None:
        require(
            isinstance(n_train, int) and 10 <= n_train <= len(X),
            f"n_train must be an integer between 10 and {len(X)}, got {n_train!r}.",
        )
        gen = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(X), generator=gen)[:n_train].sort().values
        X, y = X[keep], y[keep]
        split.X_train, split.y_train = X, y

    model = build_model("mlp", split.image_shape, split.num_classes, seed=seed, hidden=hidden)
    model = model.to(dev)
    every = max(1, epochs // n_checkpoints)
    trained = train_model(
        model, X, y, epochs=epochs, lr=0.05, batch_size=64, seed=seed,
        checkpoint_every=every, progress=progress,
    )  # fmt: skip
    with torch.no_grad():
        logits = model(split.X_test.to(dev)).cpu()
    pred = logits.argmax(1)
    accuracy = float((pred == split.y_test).double().mean())
    query_idx = pick_queries(split.y_test, pred, n_queries, seed)
    queries = (split.X_test[query_idx], split.y_test[query_idx])

    ctx = DemoContext(
        task=Task(model, loss="cross_entropy"),
        checkpoints=trained.checkpoints[-n_checkpoints:],
        checkpoint_lrs=trained.checkpoint_lrs[-n_checkpoints:],
        seed=seed,
        progress=progress,
    )
    runs = _run_methods(METHODS if methods is None else methods, ctx, (X, y), queries)
    ck_epochs = [every * (i + 1) for i in range(len(trained.checkpoints))][-n_checkpoints:]
    result = DemoResult(
        config={
            "dataset": f"scikit-learn digits (8x8 images), split seed {seed}",
            "training examples": len(X),
            "test examples": len(split.X_test),
            "model": f"MLP 64-{'-'.join(map(str, hidden))}-10 (ReLU)",
            "parameters": ctx.task.num_params,
            "training": f"SGD lr=0.05 momentum=0.9, batch 64, {epochs} epochs",
            "checkpoints (TracIn, TRAK)": "after epochs " + ", ".join(map(str, ck_epochs)),
            "seed": seed,
            "device": str(dev),
        },
        split=split,
        model=model,
        losses=trained.losses,
        test_accuracy=accuracy,
        query_idx=query_idx,
        predictions=pred[query_idx],
        probabilities=logits[query_idx].softmax(1),
        runs=runs,
    )
    result.seconds = time.perf_counter() - t0
    report = build_demo_report(result, top_k)

    out.mkdir(parents=True, exist_ok=True)
    done = [r for r in runs if r.scores is not None]
    payload = {
        "scores": {r.name: r.scores.float() for r in done},
        "query_indices": query_idx,
        "queries": queries,
        "predictions": result.predictions,
        "config": result.config,
        "seconds": {r.name: (r.fit_seconds, r.score_seconds) for r in done},
        "skipped": {r.name: r.skipped for r in runs if r.skipped},
    }
    atomic_write(out / "scores.pt", lambda f: torch.save(payload, f))
    path = report.write(out / "report.html")
    print(f"tdakit demo: {len(done)} methods, {len(query_idx)} queries, "
          f"{result.seconds:.1f} s. Report: {path.resolve()}")  # fmt: skip
    return path
