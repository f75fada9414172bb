"""The ``tdakit`` command line through typer's CliRunner."""

from __future__ import annotations

import pytest
import torch
import typer
from typer.testing import CliRunner

import tdakit
from tdakit.cli import EXIT_USAGE, app, friendly_errors
from tdakit.errors import TdakitError

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"tdakit {tdakit.__version__} (torch {torch.__version__})"


def test_demo_tiny(tmp_path):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--queries",
        "2",
        "--epochs",
        "1",
        "--hidden",
        "4",
        "--train-size",
        "60",
        "--seed",
        "3",
        "--reliability-samples",
        "2",
        "--quiet",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = out / "report.html"
    assert str(report.resolve()) in result.stdout
    html = report.read_text(encoding="utf-8")
    assert html.count('<div class="query">') == 2 and "split seed 3" in html
    payload = torch.load(out / "scores.pt")
    assert all(S.shape == (2, 60) for S in payload["scores"].values())
    assert set(payload["reliable"]) == set(payload["scores"])  # every method has verdicts


def test_bad_input_gives_clean_message_and_exit_code_2(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    result = runner.invoke(app, ["demo", "--out", str(target), "--quiet"])
    assert result.exit_code == EXIT_USAGE == 2
    assert result.stderr.startswith("Error: ") and "not a directory" in result.stderr
    assert "Traceback" not in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)  # typer.Exit, not the TdakitError

    too_many = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--queries", "100000"])
    assert too_many.exit_code == 2 and "between 1 and the 450 test examples" in too_many.stderr
    assert not (tmp_path / "d").exists()


def test_friendly_errors_only_catches_tdakit_errors():
    @friendly_errors
    def bug() -> None:
        raise KeyError("a real bug")

    @friendly_errors
    def bad_input() -> None:
        raise TdakitError("what is wrong and how to fix it")

    with pytest.raises(KeyError):  # a bug keeps its traceback
        bug()
    with pytest.raises(typer.Exit) as info:
        bad_input()
    assert info.value.exit_code == 2


def test_usage_errors_exit_non_zero():
    result = runner.invoke(app, ["demo", "--queries", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2
