"""``tdakit demo``: train a small MLP on the 8x8 digits, explain a few test predictions with
every available attribution method, and write a self-contained HTML report.

Everything is seeded (data split, initialisation, batch order, query choice, random
projections), runs offline, and takes well under a minute on two CPU cores.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

import tdakit
from tdakit.data import DataSplit
from tdakit.errors import ConfigError, StoreError, require
from tdakit.methods.base import AttributionMethod
from tdakit.storage.fileio import atomic_write
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
    """What a method may take from the run: the task, training checkpoints, the seed."""

    task: Task
    checkpoints: list[dict[str, torch.Tensor]]
    checkpoint_lrs: list[float]
    seed: int
    progress: bool

    def objects(self) -> dict[str, object]:
        return {"checkpoints": self.checkpoints, "lrs": self.checkpoint_lrs}


@dataclass(frozen=True)
class MethodEntry:
    """A method in the demo, by its registry configuration.

    ``config`` is what :func:`tdakit.methods.from_config` takes (``{"method": name, ...}``);
    ``uses`` names run objects passed too (``"checkpoints"``, ``"lrs"``). An ``optional``
    entry whose method is not registered (an extra that is not installed) is skipped with
    the reason printed and shown in the report.
    """

    name: str
    config: dict
    description: str
    uses: tuple[str, ...] = ()
    optional: bool = False

    def resolve(self) -> tuple[type | None, str]:
        """``(class, "")`` if registered, else ``(None, reason)``; required entries raise."""
        method = self.config.get("method")
        if method not in tdakit.methods.METHODS:
            if not self.optional:
                raise ConfigError(f"Method {method!r} is not registered; the install is broken.")
            return None, f"method {method!r} is not available in this installation"
        return tdakit.methods.METHODS[method], ""

    def build(self, ctx: DemoContext) -> AttributionMethod:
        objects = ctx.objects()
        config = {**self.config, "progress": ctx.progress}
        if "seed" in self.config:
            config["seed"] = ctx.seed
        return tdakit.methods.from_config(config, ctx.task, **{k: objects[k] for k in self.uses})


INFLUENCE_DAMPING = 0.01  # absolute λ; 1e-3 leaves the near-singular GGN directions too noisy


def _influence(solver: str, **kw: object) -> dict:
    return {"method": "influence", "solver": solver, "damping": INFLUENCE_DAMPING, **kw}


METHODS: list[MethodEntry] = [
    MethodEntry(
        "GradDot", {"method": "grad_dot"}, "g_q · g_i: loss gradients at the final weights"
    ),
    MethodEntry(
        "GradCos", {"method": "grad_cos"}, "cosine of the loss gradients (no gradient-norm bias)"
    ),
    MethodEntry(
        "TracIn",
        {"method": "tracin"},
        "Σ_t η_t g_q(θ_t) · g_i(θ_t) over the saved training checkpoints",
        uses=("checkpoints", "lrs"),
    ),
    MethodEntry(
        "Influence (exact GGN)",
        _influence("exact", curvature="ggn"),
        "(1/N) g_qᵀ (G + λI)⁻¹ g_i, exact Gauss-Newton matrix, λ=0.01",
    ),
    MethodEntry(
        "Influence (EK-FAC)",
        _influence("ekfac"),
        "influence with eigenvalue-corrected Kronecker-factored GGN, λ=0.01",
    ),
    MethodEntry(
        "DataInf", _influence("datainf"), "closed-form layerwise influence approximation, λ=0.01"
    ),
    MethodEntry(
        "TRAK",
        {"method": "trak", "seed": 0},
        "projected margin gradients (k=512), (ΦᵀΦ + λI)⁻¹ kernel, averaged over the "
        "TracIn checkpoints",
        uses=("checkpoints",),
    ),
    MethodEntry(
        "RepresenterPoints",
        {"method": "representer"},
        "α_i · h_iᵀ h_q from an L2-regularised refit of the last layer",
    ),
    MethodEntry(
        "RepresentationSimilarity",
        {"method": "representation_similarity"},
        "cosine of penultimate-layer representations (label-agnostic)",
    ),
    MethodEntry(
        "RandomBaseline", {"method": "random", "seed": 0}, "i.i.d. N(0, 1) scores: the chance level"
    ),
]


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
        method = entry.build(ctx).fit(train)
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

    t0 = time.perf_counter()
    out = Path(out_dir)
    require(
        str(out_dir).strip() != "",
        "The output directory is an empty path; pass a directory name such as tdakit-demo.",
    )
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

    created = prepare_output_dir(out)
    try:
        return _run(
            out,
            split,
            X,
            y,
            n_queries,
            seed,
            progress,
            epochs,
            hidden,
            n_checkpoints,
            top_k,
            methods,
            dev,
            t0,
        )
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def prepare_output_dir(out: Path) -> bool:
    """Create ``out`` (if needed) and check that it is writable, before any work is done.
    Returns whether it was created here."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".tdakit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise StoreError(
            f"Cannot write to the output directory {str(out)!r} ({err.strerror or err}); "
            "choose a writable directory with --out."
        ) from err
    return created


def _run(
    out,
    split,
    X,
    y,
    n_queries,
    seed,
    progress,
    epochs,
    hidden,
    n_checkpoints,
    top_k,
    methods,
    dev,
    t0,
) -> Path:
    from tdakit.models import build_model
    from tdakit.report.demo_report import build_demo_report
    from tdakit.training import train_model

    model = build_model("mlp", split.image_shape, split.num_classes, seed=seed, hidden=hidden)
    model = model.to(dev)
    every = max(1, epochs // n_checkpoints)
    trained = train_model(
        model,
        X,
        y,
        epochs=epochs,
        lr=0.05,
        batch_size=64,
        seed=seed,
        checkpoint_every=every,
        progress=progress,
    )
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
    print(
        f"tdakit demo: {len(done)} methods, {len(query_idx)} queries, "
        f"{result.seconds:.1f} s. Report: {path.resolve()}"
    )
    return path
