"""``tdakit demo``: train a small MLP on the 8x8 digits, explain a few test predictions with
every available attribution method, and write a self-contained HTML report.

Everything is seeded (data split, initialisation, batch order, query choice, random
projections), runs offline, and takes well under a minute on two CPU cores.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tdakit.data import DataSplit
from tdakit.demo.entries import METHODS, DemoContext, MethodEntry
from tdakit.errors import require
from tdakit.storage.fileio import atomic_write, prepare_output_dir
from tdakit.task import Task

__all__ = ["DemoResult", "MethodRun", "pick_queries", "run_demo"]


@dataclass
class MethodRun:
    """One method's outcome in the demo."""

    name: str
    description: str
    scores: torch.Tensor | None = None
    fit_seconds: float = 0.0
    score_seconds: float = 0.0
    skipped: str = ""
    method: object = None  # the fitted method (re-run over posterior samples)
    reliability: object = None  # its ScoreDistribution, when computed

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
    sampler: str = ""  # how the reliability samples were drawn ("" = not computed)


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
        run.method = method
        runs.append(run)
    bar.close()
    return runs


@dataclass(frozen=True)
class Settings:
    """The demo's knobs (see :func:`run_demo`)."""

    n_queries: int = 6
    seed: int = 0
    progress: bool = True
    epochs: int = 12
    hidden: tuple[int, ...] = (32,)
    n_train: int | None = None
    n_checkpoints: int = 3
    top_k: int = 5
    methods: tuple[MethodEntry, ...] | None = None
    device: str | None = None
    reliability_samples: int = 8


def run_demo(
    out_dir: str | Path = "tdakit-demo",
    n_queries: int = 6,
    seed: int = 0,
    progress: bool = True,
    **options: object,
) -> Path:
    """Run the demo and write ``report.html`` and ``scores.pt`` into ``out_dir``.

    Args:
        out_dir: output directory (created, and checked writable, before any work).
        n_queries: how many test predictions to explain.
        seed: seeds the split, model, training, query choice, samplers and random methods.
        progress: show progress bars and messages.
        options: ``epochs``, ``hidden`` (training length and MLP widths), ``n_train`` (a
            seeded subset of this many training examples; ``None``: all 1347),
            ``n_checkpoints`` (kept for TracIn and TRAK), ``top_k`` (proponents and
            opponents shown), ``methods`` (the entries to run, default :data:`METHODS`),
            ``device``, ``reliability_samples`` (posterior samples behind every verdict:
            seeded further training of the final model; 0 = no verdicts).

    Returns the path of the report.
    """
    fields = set(Settings.__dataclass_fields__)
    unknown = sorted(set(options) - fields)
    require(not unknown, f"Unknown demo option(s) {unknown}; valid: {sorted(fields)}.")
    if "hidden" in options:
        options["hidden"] = tuple(options["hidden"])  # type: ignore[arg-type]
    if options.get("methods") is not None:
        options["methods"] = tuple(options["methods"])  # type: ignore[arg-type]
    cfg = replace(Settings(n_queries=n_queries, seed=seed, progress=progress), **options)
    return _demo(out_dir, cfg)


def _demo(out_dir: str | Path, cfg: Settings) -> Path:
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
        isinstance(cfg.n_checkpoints, int) and 1 <= cfg.n_checkpoints <= cfg.epochs,
        f"n_checkpoints must be between 1 and epochs={cfg.epochs}, got {cfg.n_checkpoints!r}.",
    )
    require(
        isinstance(cfg.top_k, int) and cfg.top_k >= 1, f"top_k must be >= 1, got {cfg.top_k!r}."
    )
    require(
        isinstance(cfg.reliability_samples, int)
        and cfg.reliability_samples in (0, *range(2, 1001)),
        f"reliability_samples must be 0 (off) or between 2 and 1000, got "
        f"{cfg.reliability_samples!r}.",
    )
    split = load_digits(seed=cfg.seed)
    require(
        isinstance(cfg.n_queries, int) and 1 <= cfg.n_queries <= len(split.y_test),
        f"n_queries must be between 1 and the {len(split.y_test)} test examples, "
        f"got {cfg.n_queries!r}.",
    )
    if cfg.n_train is not None:
        require(
            isinstance(cfg.n_train, int) and 10 <= cfg.n_train <= len(split.X_train),
            f"n_train must be an integer between 10 and {len(split.X_train)}, got {cfg.n_train!r}.",
        )
        gen = torch.Generator().manual_seed(cfg.seed)
        keep = torch.randperm(len(split.X_train), generator=gen)[: cfg.n_train].sort().values
        split.X_train, split.y_train = split.X_train[keep], split.y_train[keep]
    created = prepare_output_dir(out)
    try:
        return _run(out, split, cfg, t0)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _reliability(runs: list[MethodRun], model, split, X, y, queries, cfg: Settings) -> str:
    """Re-run every method on seeded further-training samples of the final model; attach
    each method's score distribution to its run. Returns the sampler in words."""
    import tdakit as tda
    from tdakit.reliability import Drawn, FurtherTraining, score_distribution

    recipe = tda.TrainingRecipe(
        "mlp",
        model_kwargs={"hidden": cfg.hidden},
        in_shape=tuple(split.image_shape),
        num_classes=split.num_classes,
        lr=0.05,
        momentum=0.9,
        batch_size=64,
        epochs=cfg.epochs,
    )
    serial = tda.Executor(backend="serial", progress=False)
    sampler = FurtherTraining(
        recipe, cfg.reliability_samples, steps=1, lr_scale=0.1, seed=cfg.seed, executor=serial
    )
    task = next(r.method for r in runs if r.method is not None).task
    drawn = Drawn(list(sampler.draw(task, (X, y))))
    bar = tqdm(runs, desc="reliability", disable=not cfg.progress, leave=False)
    for run in bar:
        if run.method is not None:
            bar.set_postfix_str(run.name)
            run.reliability = score_distribution(run.method, drawn, (X, y), queries)
    bar.close()
    return (
        f"one epoch of further training of the final model at a tenth of the learning "
        f"rate, {cfg.reliability_samples} batch-order seeds"
    )


def _run(out: Path, split: DataSplit, cfg: Settings, t0: float) -> Path:
    from tdakit.models import build_model
    from tdakit.report.demo_report import build_demo_report
    from tdakit.training import train_model

    dev = torch.device(cfg.device) if cfg.device is not None else torch.device("cpu")
    X, y = split.X_train, split.y_train
    model = build_model(
        "mlp", split.image_shape, split.num_classes, seed=cfg.seed, hidden=cfg.hidden
    ).to(dev)
    every = max(1, cfg.epochs // cfg.n_checkpoints)
    trained = train_model(
        model,
        X,
        y,
        epochs=cfg.epochs,
        lr=0.05,
        batch_size=64,
        seed=cfg.seed,
        checkpoint_every=every,
        progress=cfg.progress,
    )
    with torch.no_grad():
        logits = model(split.X_test.to(dev)).cpu()
    pred = logits.argmax(1)
    accuracy = float((pred == split.y_test).double().mean())
    query_idx = pick_queries(split.y_test, pred, cfg.n_queries, cfg.seed)
    queries = (split.X_test[query_idx], split.y_test[query_idx])
    ctx = DemoContext(
        task=Task(model, loss="cross_entropy"),
        checkpoints=trained.checkpoints[-cfg.n_checkpoints :],
        checkpoint_lrs=trained.checkpoint_lrs[-cfg.n_checkpoints :],
        seed=cfg.seed,
        progress=cfg.progress,
    )
    runs = _run_methods(list(cfg.methods or METHODS), ctx, (X, y), queries)
    sampler = ""
    if cfg.reliability_samples and any(r.method is not None for r in runs):
        sampler = _reliability(runs, model, split, X, y, queries, cfg)
    ck_epochs = [every * (i + 1) for i in range(len(trained.checkpoints))][-cfg.n_checkpoints :]
    result = DemoResult(
        config={
            "dataset": f"scikit-learn digits (8x8 images), split seed {cfg.seed}",
            "training examples": len(X),
            "test examples": len(split.X_test),
            "model": f"MLP 64-{'-'.join(map(str, cfg.hidden))}-10 (ReLU)",
            "parameters": ctx.task.num_params,
            "training": f"SGD lr=0.05 momentum=0.9, batch 64, {cfg.epochs} epochs",
            "checkpoints (TracIn, TRAK)": "after epochs " + ", ".join(map(str, ck_epochs)),
            "reliability samples": sampler or "none",
            "seed": cfg.seed,
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
        sampler=sampler,
    )
    result.seconds = time.perf_counter() - t0
    report = build_demo_report(result, cfg.top_k)
    done = [r for r in runs if r.scores is not None]
    payload = {
        "scores": {r.name: r.scores.float() for r in done},
        "reliable": {r.name: r.reliability.reliable for r in done if r.reliability is not None},
        "snr": {r.name: r.reliability.snr.float() for r in done if r.reliability is not None},
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
