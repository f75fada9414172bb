"""``tdakit attribute`` on a small saved model and .npz files: the expected files, and one
clear line with exit code 2 for bad paths, bad factories and mismatched data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import tdakit as tda
from tdakit.cli import EXIT_USAGE, app

runner = CliRunner()


def make_model() -> nn.Module:
    """The factory the CLI imports (this module is importable while tests run)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def make_other() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


@pytest.fixture
def files(tmp_path):
    g = torch.Generator().manual_seed(0)
    model = make_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    X = np.random.default_rng(0).normal(size=(40, 4))  # float64: cast to the model's dtype
    y = np.arange(40) % 3
    np.savez(tmp_path / "train.npz", X=X, y=y)
    np.savez(tmp_path / "queries.npz", X=X[:5] + 0.01, y=y[:5])
    return tmp_path, model, torch.from_numpy(X).float(), torch.from_numpy(y)


def invoke(args: list[str]):
    return runner.invoke(app, ["attribute", *args, "--quiet"])


def base(tmp_path) -> list[str]:
    return [
        "--model",
        "test_attribute:make_model",
        "--weights",
        str(tmp_path / "model.pt"),
        "--train",
        str(tmp_path / "train.npz"),
        "--queries",
        str(tmp_path / "queries.npz"),
    ]


def test_attribute_writes_the_expected_files(files):
    tmp_path, model, X, y = files
    out = tmp_path / "out"
    result = invoke(
        [
            *base(tmp_path),
            "--method",
            "grad_dot",
            "--option",
            "projection=null",
            "--k",
            "4",
            "--reliability",
            "3",
            "--out",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    for name in ("proponents.csv", "opponents.csv", "results.json", "report.html"):
        assert (out / name).is_file()
    ref_idx, _ = tda.GradDot(tda.Task(model)).fit((X, y)).top_k((X[:5] + 0.01, y[:5]), 4)
    with open(out / "proponents.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 4 and set(rows[0]) >= {
        "query",
        "rank",
        "train_index",
        "score",
        "snr",
        "reliable",
    }
    got = torch.tensor([int(r["train_index"]) for r in rows]).view(5, 4)
    assert torch.equal(got, ref_idx)
    summary = json.loads((out / "results.json").read_text())
    assert summary["proponents"] == ref_idx.tolist() and 0 <= summary["fraction_reliable"] <= 1
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "proponents" in html and "Reliability" in html


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--train": "missing.npz"}, "No training data"),
        ({"--weights": "missing.pt"}, "No weights file"),
        ({"--model": "no_such_module:make"}, "Cannot import the model factory"),
        ({"--model": "test_attribute:nothing"}, "has no 'nothing'"),
        ({"--model": "test_attribute"}, "package.module:name"),
        ({"--model": "test_attribute:make_other"}, "do not fit the model"),
        ({"--queries": "bad_queries.npz"}, "could not run"),
        ({"--train": "unlabelled.npz"}, "needs arrays named X and y"),
        ({"--method": "shapley"}, "registered methods"),
        ({"--train": "notes.txt"}, "Unsupported training data"),
    ],
)
def test_bad_inputs_get_one_line_and_exit_code_2(files, change, message):
    tmp_path = files[0]
    np.savez(tmp_path / "bad_queries.npz", X=np.zeros((3, 7)), y=np.zeros(3, dtype=int))
    np.savez(tmp_path / "unlabelled.npz", data=np.zeros((3, 4)))
    (tmp_path / "notes.txt").write_text("hello")
    args = base(tmp_path)
    for key, value in change.items():
        if key not in args:
            args += [key, value]
        else:
            args[args.index(key) + 1] = value if key == "--model" else str(tmp_path / value)
    result = invoke([*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == EXIT_USAGE, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert message in lines[0]
    assert not (tmp_path / "out" / "results.json").exists()


def _save_checkpoints(tmp_path, model) -> list[str]:
    """Two randomly perturbed copies of ``model``'s weights, saved as training checkpoints."""
    paths = []
    g = torch.Generator().manual_seed(5)
    for t in range(2):
        state = {
            k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()
        }
        torch.save(state, tmp_path / f"ckpt{t}.pt")
        paths.append(str(tmp_path / f"ckpt{t}.pt"))
    return paths


@pytest.mark.parametrize("method", ["tracin", "trak"])
def test_checkpoints_drive_tracin_and_trak(files, method):
    tmp_path, model, X, y = files
    paths = _save_checkpoints(tmp_path, model)
    out = tmp_path / "out"
    options = ["--option", "lrs=[0.1, 0.05]"] if method == "tracin" else []
    args = [*base(tmp_path), "--method", method, *options, "--k", "3", "--out", str(out)]
    result = invoke([*args, "--checkpoint", paths[0], "--checkpoint", paths[1]])
    assert result.exit_code == 0, result.output
    states = [torch.load(p, weights_only=True) for p in paths]
    task = tda.Task(model)
    ref = (
        tda.TracIn(task, checkpoints=states, lrs=[0.1, 0.05])
        if method == "tracin"
        else tda.TRAK(task, checkpoints=states)
    )
    ref_idx, ref_val = ref.fit((X, y)).top_k((X[:5] + 0.01, y[:5]), 3)
    summary = json.loads((out / "results.json").read_text())
    assert summary["proponents"] == ref_idx.tolist()
    assert summary["checkpoints"] == paths
    with open(out / "proponents.csv") as f:
        got = torch.tensor([float(r["score"]) for r in csv.DictReader(f)]).view(5, 3)
    torch.testing.assert_close(got, ref_val.float(), rtol=1e-5, atol=1e-6)  # CSV: 6 digits


def test_trak_without_checkpoints_is_an_ensemble_of_the_given_model(files):
    tmp_path, model, X, y = files
    out = tmp_path / "out"
    result = invoke([*base(tmp_path), "--method", "trak", "--k", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    ref_idx, _ = (
        tda.TRAK(tda.Task(model), checkpoints=[model]).fit((X, y)).top_k((X[:5] + 0.01, y[:5]), 3)
    )
    assert json.loads((out / "results.json").read_text())["proponents"] == ref_idx.tolist()


@pytest.mark.parametrize(
    ("method", "with_checkpoint", "other_architecture", "message"),
    [
        ("tracin", False, False, "needs the checkpoints saved during training"),
        ("tracin", True, False, "needs the learning rate at each checkpoint"),
        ("grad_dot", True, False, "--checkpoint applies to methods that take checkpoints"),
        ("trak", True, True, "do not fit the model"),
    ],
)
def test_checkpoint_misuse_gets_one_line(
    files, method, with_checkpoint, other_architecture, message
):
    tmp_path = files[0]
    ckpt = tmp_path / "ckpt.pt"
    source = make_other() if other_architecture else make_model()
    torch.save(source.state_dict(), ckpt)
    args = [*base(tmp_path), "--method", method, "--out", str(tmp_path / "out")]
    result = invoke(args + (["--checkpoint", str(ckpt)] if with_checkpoint else []))
    assert result.exit_code == EXIT_USAGE, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "out").exists()
