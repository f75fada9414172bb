"""The ``tdakit`` command line: a thin layer over the Python API.

Each command is a function decorated with ``@app.command()`` and ``@friendly_errors``;
later commands (``tdakit bench``, ``tdakit attribute``) are added the same way, or as a
sub-app with ``app.add_typer(sub_app, name="bench")``. A :class:`TdakitError` is printed
as a one-line message and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer

from tdakit.errors import TdakitError

__all__ = ["EXIT_USAGE", "app", "friendly_errors"]

EXIT_USAGE = 2  # bad input or configuration (same code click uses for usage errors)

app = typer.Typer(
    name="tdakit",
    help="Training data attribution for PyTorch: which training examples made the model "
    "predict this?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

F = TypeVar("F", bound=Callable[..., object])


def friendly_errors(fn: F) -> F:
    """Turn a :class:`TdakitError` into ``Error: <message>`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except TdakitError as exc:
            typer.secho(f"Error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@friendly_errors
def demo(
    out: Path = typer.Option(
        Path("tdakit-demo"), "--out", "-o", help="Directory for report.html and scores.pt."
    ),
    queries: int = typer.Option(6, "--queries", "-n", min=1, help="Test predictions to explain."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for data split, model and queries."),
    epochs: int = typer.Option(12, "--epochs", min=1, help="Training epochs of the demo MLP."),
    hidden: int = typer.Option(32, "--hidden", min=1, help="Hidden width of the demo MLP."),
    train_size: int = typer.Option(
        None, "--train-size", min=10, help="Use a seeded subset of this many training examples."
    ),
    reliability_samples: int = typer.Option(
        8,
        "--reliability-samples",
        min=0,
        help="Posterior samples behind every verdict (further training); 0 = no verdicts.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Explain digit predictions with every attribution method; write an HTML report.

    Trains a small MLP on scikit-learn's 8x8 digits, attributes a few test predictions
    (including a misclassified one) and writes OUT/report.html and OUT/scores.pt.
    """
    from tdakit.demo import run_demo

    run_demo(
        out,
        n_queries=queries,
        seed=seed,
        progress=not quiet,
        epochs=epochs,
        hidden=(hidden,),
        n_train=train_size,
        n_checkpoints=min(3, epochs),
        reliability_samples=reliability_samples,
    )


bench_app = typer.Typer(help="Benchmark suites and the leaderboard.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("list")
def bench_list() -> None:
    """List the built-in suites."""
    from tdakit.suites import builtin_names, load

    for name in builtin_names():
        typer.echo(f"{name}: {load(name).description}")


@bench_app.command("run")
@friendly_errors
def bench_run(
    suite: str = typer.Argument(..., help="A built-in suite name or a suite .toml file."),
    out: Path = typer.Option(Path("tdakit-bench"), "--out", "-o", help="Output directory."),
    cache: Path = typer.Option(None, "--cache", help="Cache directory (default OUT/cache)."),
    backend: str = typer.Option("serial", "--backend", help="serial, local or ray."),
    workers: int = typer.Option(2, "--workers", min=1, help="Workers of the local backend."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run one suite: results.csv, results.json and report.html in OUT/<suite>."""
    from tdakit import bench
    from tdakit.execution import Executor

    result = bench.run(
        suite,
        out,
        cache_dir=cache,
        executor=Executor(backend, workers, progress=not quiet),
        progress=not quiet,
    )
    typer.echo(
        f"{result.suite.name}: {len(result.rows)} results in {result.seconds:.1f} s; "
        f"report: {(Path(out) / result.suite.name / 'report.html').resolve()}"
    )


@bench_app.command("leaderboard")
@friendly_errors
def bench_leaderboard(
    out: Path = typer.Option(Path("docs/leaderboard.md"), "--out", "-o", help="Markdown file."),
    work: Path = typer.Option(Path("tdakit-bench"), "--work", help="Suite outputs and cache."),
    suites: list[str] = typer.Option(None, "--suite", help="Only these suites (repeatable)."),
    backend: str = typer.Option("serial", "--backend", help="serial, local or ray."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run every suite and regenerate the leaderboard (stamped with commit and machine)."""
    from tdakit import bench
    from tdakit.execution import Executor

    path = bench.leaderboard(
        suites or None,
        out,
        work_dir=work,
        executor=Executor(backend, progress=not quiet),
        progress=not quiet,
    )
    typer.echo(f"leaderboard: {path.resolve()}")


def _options(pairs: list[str]) -> dict[str, object]:
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, lists, ...)."""
    import json

    out: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TdakitError(f"--option takes key=value, got {pair!r}.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@app.command()
@friendly_errors
def attribute(
    model: str = typer.Option(..., "--model", help="Model factory: package.module:function."),
    weights: Path = typer.Option(None, "--weights", help="State dict (.pt/.pth/.safetensors)."),
    train: str = typer.Option(
        ...,
        "--train",
        help="Training data: .npz, .pt, .csv, an image folder, or package.module:function.",
    ),
    queries: str = typer.Option(..., "--queries", help="Query data (same forms as --train)."),
    method: str = typer.Option(
        "grad_dot",
        "--method",
        help="A registered method: grad_dot, grad_cos, influence, tracin, trak, "
        "representer, ... (an unknown name lists them all).",
    ),
    checkpoint: list[Path] = typer.Option(
        None,
        "--checkpoint",
        help="A state dict saved during training (repeatable, in training order): the "
        "checkpoints of tracin (with --option lrs=[...]) or the ensemble of trak.",
    ),
    option: list[str] = typer.Option(
        None, "--option", help="Method option key=value (repeatable), e.g. --option projection=256."
    ),
    loss: str = typer.Option("cross_entropy", "--loss", help="cross_entropy or mse."),
    k: int = typer.Option(10, "--k", min=1, help="Proponents and opponents per query."),
    reliability: int = typer.Option(
        0,
        "--reliability",
        min=0,
        help="Laplace posterior samples behind a verdict per explanation (0 = none).",
    ),
    out: Path = typer.Option(Path("tdakit-attribution"), "--out", "-o", help="Output dir."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Attribute your own saved model on your own data: top-k proponents and opponents as
    CSV and JSON, and an HTML report."""
    from tdakit.attribute import attribute as run

    if reliability == 1:
        raise TdakitError("--reliability needs at least 2 samples (or 0 for none).")
    summary = run(
        model,
        None if weights is None else str(weights),
        train,
        queries,
        out,
        method=method,
        options=_options(option),
        loss=loss,
        k=k,
        reliability=reliability,
        checkpoints=[str(c) for c in checkpoint] if checkpoint else None,
        progress=not quiet,
    )
    typer.echo(
        f"{summary['method']['method']}: top-{k} for {len(summary['proponents'])} "
        f"queries over {summary['n_train']} training examples; "
        f"report: {(Path(out) / 'report.html').resolve()}"
    )


@app.command()
def version() -> None:
    """Print the tdakit and torch versions."""
    import torch

    import tdakit

    typer.echo(f"tdakit {tdakit.__version__} (torch {torch.__version__})")


if __name__ == "__main__":  # pragma: no cover
    app()
