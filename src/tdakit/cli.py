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


@app.command()
def version() -> None:
    """Print the tdakit and torch versions."""
    import torch

    import tdakit

    typer.echo(f"tdakit {tdakit.__version__} (torch {torch.__version__})")


if __name__ == "__main__":  # pragma: no cover
    app()
