"""A miniature suite end to end: results, cache reuse with identical numbers, resume after an
interruption, hyperparameters chosen on validation queries, and config validation."""

from __future__ import annotations

import json

import pytest
import torch

import tdakit as tda
from tdakit import bench, metrics
from tdakit.errors import ConfigError
from tdakit.suites import builtin_names, load, parse

MINI = {
    "name": "mini",
    "seed": 0,
    "data": {"dataset": "digits", "n_train": 120, "n_query": 6, "n_validation": 4},
    "transform": {"kind": "label_flip", "fraction": 0.1},
    "model": {"name": "mlp", "hidden": [8]},
    "training": {"epochs": 2, "lr": 0.05, "batch_size": 32},
    "methods": [
        {"label": "Grad-Dot", "method": "grad_dot"},
        {
            "label": "EK-FAC",
            "method": "influence",
            "solver": "ekfac",
            "tune": {"damping": [0.01, 1.0]},
        },
        {"label": "TracIn", "method": "tracin"},
        {"label": "Random", "method": "random"},
    ],
    "metrics": {
        "names": ["lds", "mislabel_detection", "class_detection", "reliability"],
        "lds": {"n_subsets": 4},
        "reliability": {"samples": 2},
    },
}


def serial() -> tda.Executor:
    return tda.Executor(backend="serial", progress=False)


def test_mini_suite_end_to_end_then_reused_from_the_cache(tmp_path):
    first = bench.run(parse(MINI), tmp_path, executor=serial(), progress=False)
    labels = [m["label"] for m in MINI["methods"]]
    names = MINI["metrics"]["names"]
    assert {(r["method"], r["metric"]) for r in first.rows} == {
        (m, n) for m in labels for n in names
    }
    out = tmp_path / "mini"
    table = json.loads((out / "results.json").read_text())
    assert len(table["rows"]) == len(first.rows) and table["meta"]["commit"]
    assert (out / "results.csv").read_text().count("\n") == len(first.rows) + 1
    html = (out / "report.html").read_text(encoding="utf-8")
    for name in labels + names:
        assert name in html
    scores = sorted((tmp_path / "cache" / "scores").glob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in scores]
    again = bench.run(parse(MINI), tmp_path, executor=serial(), progress=False)
    assert [(r["method"], r["metric"], r["value"]) for r in again.rows] == [
        (r["method"], r["metric"], r["value"]) for r in first.rows
    ]
    assert [p.stat().st_mtime_ns for p in scores] == stamps  # nothing recomputed
    # the tuned damping is the one with the best LDS on the validation queries
    ekfac = next(o for o in first.outcomes if o.label == "EK-FAC")
    truth = first.data
    assert ekfac.chosen["damping"] in (0.01, 1.0)
    assert all(r["chosen"] == ekfac.chosen for r in first.rows if r["method"] == "EK-FAC")
    assert truth.flipped is not None and int(truth.flipped.sum()) == 12


def test_an_interrupted_run_resumes(tmp_path):
    broken = json.loads(json.dumps(MINI))
    broken["methods"][2] = {"label": "TracIn", "method": "tracin", "lrs": -1.0}
    with pytest.raises(ConfigError, match="positive"):
        bench.run(parse(broken), tmp_path, executor=serial(), progress=False)
    done = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "scores").iterdir()}
    assert len(done) >= 2  # Grad-Dot and the EK-FAC grid finished before the failure
    result = bench.run(parse(MINI), tmp_path, executor=serial(), progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "scores").iterdir()}
    assert all(after[name] == stamp for name, stamp in done.items())  # reused, not redone
    assert len(result.rows) == 16


def test_validation_choice_matches_a_direct_computation(tmp_path):
    result = bench.run(parse(MINI), tmp_path, executor=serial(), progress=False)
    from tdakit.suites.runner import recipe_for

    data = result.data
    recipe = recipe_for(result.suite, data)
    sub = tda.groundtruth.subset_retraining(
        recipe,
        (data.X, data.y),
        (torch.cat([data.Xv, data.Xq]), torch.cat([data.yv, data.yq])),
        n_subsets=4,
        seed=0,
        model_seed=1000,
        executor=serial(),
    )
    lds_rows = {r["method"]: r["value"] for r in result.rows if r["metric"] == "lds"}
    gd = next(o for o in result.outcomes if o.label == "Grad-Dot")
    direct = metrics.lds(gd.S_test, sub.masks, sub.losses[:, 4:]).value
    assert lds_rows["Grad-Dot"] == pytest.approx(direct, abs=1e-12)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"colour": "red"}, "Unknown key"),
        ({"data": {"dataset": "imagenet"}}, "dataset must be one of"),
        ({"transform": {"kind": "rotate"}}, "kind must be one of"),
        ({"metrics": {"names": ["backdoor_detection"]}}, "needs \\[transform\\] kind"),
        ({"methods": [{"label": "x", "method": "shapley"}]}, "unknown method"),
        ({"methods": []}, "at least one"),
        ({"training": {"epochz": 3}}, "Unknown key"),
        ({"training": {"loss": "mse"}}, "Unknown key"),  # the data decides the loss
        ({"metrics": {"names": ["lds"], "lds": {"m": 3}}}, "Unknown key"),
    ],
)
def test_bad_suites_are_refused(patch, message):
    with pytest.raises(ConfigError, match=message):
        parse({**MINI, **patch})


def test_builtin_suites_are_valid():
    names = builtin_names()
    assert {
        "digits-mlp",
        "fashion-lenet",
        "tabular-mlp",
        "regression-mlp",
        "text-transformer",
    } <= set(names)
    kinds = {load(n).transform.get("kind", "plain") for n in names}
    assert kinds == {"plain", "label_flip", "shortcut", "backdoor", "class_grouping", "mixed"}
    with pytest.raises(ConfigError, match="built-in suite"):
        load("no-such-suite")


def test_leaderboard_is_stamped_and_lists_every_method_and_metric(tmp_path):
    spec = parse(
        {**MINI, "metrics": {"names": ["lds", "mislabel_detection"], "lds": {"n_subsets": 4}}}
    )
    path = bench.leaderboard(
        [spec],
        tmp_path / "leaderboard.md",
        work_dir=tmp_path / "work",
        executor=serial(),
        progress=False,
    )
    text = path.read_text()
    commit = json.loads((tmp_path / "work" / "results.json").read_text())["meta"]["commit"]
    assert f"at commit `{commit}`" in text and "torch threads" in text and "total wall time" in text
    header = "| method | lds | mislabel_detection | time (s) | peak memory (MiB) |"
    assert "## mini" in text and header in text
    result = bench.run(spec, tmp_path / "work", executor=serial(), progress=False)  # cached
    for row in result.rows:  # every value with its interval, in its method's row
        # (the label may carry the tuned hyperparameters: "EK-FAC (damping=0.01)")
        (line,) = [x for x in text.splitlines() if x.startswith(f"| {row['method']} ")]
        ci = "" if row["ci_low"] is None else f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
        assert f"| {row['value']:.3f}{ci} |" in line, row
    assert (
        sum(
            line.startswith(f"| {m['label']} ")
            for line in text.splitlines()
            for m in MINI["methods"]
        )
        == 4
    )
