"""Run a suite end to end: train (or reload) through the executor, compute ground truth,
run every method with its cost, compute every metric with confidence intervals.

Everything is cached by content under ``cache_dir`` (trained models and ground truth by the
executor, each method's scores in a safe result file), so a second run reuses it all and an
interrupted run resumes. Hyperparameters in a method's ``tune`` grid are chosen by LDS on
the *validation* queries; the test queries only ever score the chosen configuration.
"""

from __future__ import annotations

import itertools
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import tdakit as tda
from tdakit import metrics
from tdakit.batching import fingerprint
from tdakit.errors import require
from tdakit.execution import Executor, content_key
from tdakit.execution.cache import load_result, save_result
from tdakit.suites.config import Suite
from tdakit.suites.data import SuiteData, build


@dataclass
class MethodOutcome:
    label: str
    config: dict[str, Any]
    S_val: torch.Tensor
    S_test: torch.Tensor
    self_scores: torch.Tensor | None
    seconds: float
    peak_mib: float
    chosen: dict[str, Any] = field(default_factory=dict)
    reliable: float | None = None


@dataclass
class SuiteResult:
    """Rows ``{suite, method, metric, value, ci_low, ci_high, seconds, peak_mib, ...}`` plus
    what the report shows."""

    suite: Suite
    rows: list[dict[str, Any]]
    outcomes: list[MethodOutcome]
    data: SuiteData
    seconds: float


class PeakRSS:
    """Peak resident memory above the starting level while the block runs (MiB)."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def recipe_for(suite: Suite, data: SuiteData) -> tda.TrainingRecipe:
    model = dict(suite.model)
    name = model.pop("name")
    return tda.TrainingRecipe(
        name,
        model_kwargs=model,
        in_shape=tuple(data.X.shape[1:]),
        num_classes=data.num_outputs,
        loss=data.loss,
        **suite.training,
    )


def run_suite(
    suite: Suite,
    cache_dir: str | Path,
    *,
    executor: Executor | None = None,
    progress: bool = True,
) -> SuiteResult:
    """Run ``suite`` (see the module docstring); ``executor`` runs the retraining jobs."""
    t0 = time.perf_counter()
    cache = Path(cache_dir)
    executor = executor or Executor(backend="serial", progress=progress)
    executor = Executor(
        executor.backend,
        executor.workers,
        str(cache / "jobs"),
        executor.progress,
        executor.ray_address,
    )
    data = build(suite)
    recipe = recipe_for(suite, data)
    ens = tda.groundtruth.seed_ensemble(
        recipe, (data.X, data.y), keep_last=3, executor=executor, pairs=[(suite.seed, suite.seed)]
    )
    model = recipe.materialise(suite.seed, data.X, data.y, ens.states[0]).eval()
    task = tda.Task(model, loss=data.loss)
    objects = {"checkpoints": ens.checkpoints[0], "lrs": ens.checkpoint_lrs[0]}
    truth = _ground_truth(suite, data, recipe, model, executor)
    outcomes = []
    for spec in tqdm(suite.methods, desc=suite.name, disable=not progress, leave=False):
        outcomes.append(_method(suite, spec, task, data, truth, cache, objects))
    if "reliability" in suite.metrics:
        _reliability(suite, outcomes, task, data, recipe, executor, objects)
    rows = _metrics(suite, data, truth, outcomes, recipe, executor)
    return SuiteResult(suite, rows, outcomes, data, time.perf_counter() - t0)


def _ground_truth(suite, data, recipe, model, executor) -> dict[str, Any]:
    out: dict[str, Any] = {}
    queries = (torch.cat([data.Xv, data.Xq]), torch.cat([data.yv, data.yq]))
    if "lds" in suite.metrics or any(m.tune for m in suite.methods):
        o = suite.metric_options.get("lds", {})
        sub = tda.groundtruth.subset_retraining(
            recipe,
            (data.X, data.y),
            queries,
            n_subsets=o.get("n_subsets", 20),
            fraction=o.get("fraction", 0.5),
            n_models=o.get("n_models", 1),
            seed=suite.seed,
            model_seed=suite.seed + 1000,
            executor=executor,
        )
        out["masks"], nv = sub.masks, len(data.Xv)
        out["lds_val"], out["lds_test"] = sub.losses[:, :nv], sub.losses[:, nv:]
    if "further_training" in suite.metrics:
        o = suite.metric_options.get("further_training", {})
        k = min(o.get("k", 40), len(data.X))
        removed = (
            torch.randperm(len(data.X), generator=torch.Generator().manual_seed(suite.seed + 3))[:k]
            .sort()
            .values
        )
        gold = tda.groundtruth.further_training(
            recipe,
            model,
            (data.X, data.y),
            data.queries,
            removed=removed,
            seeds=o.get("seeds", 3),
            executor=executor,
        )
        out["further"], out["removed"] = gold.scores, removed
    return out


def _grid(spec) -> list[dict[str, Any]]:
    keys = list(spec.tune)
    return [
        dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(spec.tune[k] for k in keys))
    ] or [{}]


def _method(suite, spec, task, data, truth, cache: Path, objects: dict) -> MethodOutcome:
    need_self = "mislabel_detection" in suite.metrics
    best: MethodOutcome | None = None
    best_val = -float("inf")
    for options in _grid(spec):
        config = {**spec.config, **options}
        outcome = _scores(suite, spec.label, config, task, data, cache, need_self, objects)
        outcome.chosen = options
        if len(_grid(spec)) == 1:
            return outcome
        require("masks" in truth, f"Tuning {spec.label!r} needs the LDS ground truth.")
        val = metrics.lds(outcome.S_val, truth["masks"], truth["lds_val"]).value
        if val > best_val:
            best, best_val = outcome, val
    assert best is not None
    return best


def _runtime(config: dict, objects: dict) -> dict:
    """The run objects a method takes besides its configuration (TracIn, TRAK)."""
    cls = tda.methods.get_method(config["method"])
    runtime = {k: objects[k] for k in cls.runtime_params if k in objects}
    if "lrs" in tda.methods.registry._params(cls) and "lrs" not in config:
        runtime["lrs"] = objects["lrs"]
    if cls.name == "trak" and "recipe" in config:
        runtime.pop("checkpoints", None)
    return runtime


def _scores(
    suite, label, config, task, data, cache: Path, need_self: bool, objects: dict
) -> MethodOutcome:
    key = content_key(
        "suite-scores",
        config,
        task.fingerprint(),
        task.code_key(),
        fingerprint(data.X, data.y, data.Xv, data.Xq),
        need_self,
    )
    path = cache / "scores" / f"{key}.safetensors"
    if path.exists():
        r = load_result(path, key)
        return MethodOutcome(
            label, config, r["S_val"], r["S_test"], r.get("self"), r["seconds"], r["peak_mib"]
        )
    start = time.perf_counter()
    with PeakRSS() as peak:
        method = tda.from_config(
            {**config, "progress": False}, task, **_runtime(config, objects)
        ).fit((data.X, data.y))
        S = method.scores((torch.cat([data.Xv, data.Xq]), torch.cat([data.yv, data.yq])))
        own = method.self_scores() if need_self else None
    seconds = time.perf_counter() - start
    nv = len(data.Xv)
    result = {
        "S_val": S[:nv].double(),
        "S_test": S[nv:].double(),
        "seconds": seconds,
        "peak_mib": peak.mib,
        "self": None if own is None else own.double(),
    }
    save_result(path, key, label, result)
    return MethodOutcome(
        label, config, result["S_val"], result["S_test"], result["self"], seconds, peak.mib
    )


def _reliability(suite, outcomes, task, data, recipe, executor, objects) -> None:
    from tdakit.reliability import Drawn, FurtherTraining, score_distribution

    n = suite.metric_options.get("reliability", {}).get("samples", 4)
    sampler = FurtherTraining(recipe, n, steps=1, lr_scale=0.1, seed=suite.seed, executor=executor)
    drawn = Drawn(list(sampler.draw(task, (data.X, data.y))))
    for o in outcomes:
        method = tda.from_config(
            {**o.config, "progress": False}, task, **_runtime(o.config, objects)
        )
        dist = score_distribution(method, drawn, (data.X, data.y), data.queries)
        o.reliable = dist.fraction_reliable


def _metrics(suite, data, truth, outcomes, recipe, executor) -> list[dict[str, Any]]:
    rows = []
    for o in outcomes:
        for name in suite.metrics:
            result = _metric(name, suite, data, truth, o, recipe, executor)
            if result is None:
                continue
            lo, hi = (float(v) for v in result.ci) if result.ci is not None else (None, None)
            rows.append(
                {
                    "suite": suite.name,
                    "method": o.label,
                    "metric": name,
                    "value": float(result.value),
                    "ci_low": lo,
                    "ci_high": hi,
                    "seconds": round(o.seconds, 3),
                    "peak_mib": round(o.peak_mib, 1),
                    "chosen": o.chosen,
                }
            )
    return rows


def _metric(name, suite, data, truth, o: MethodOutcome, recipe, executor):
    opts = suite.metric_options.get(name, {})
    S = o.S_test
    if name == "lds":
        return metrics.lds(S, truth["masks"], truth["lds_test"])
    if name == "further_training":
        return metrics.further_training_agreement(S[:, truth["removed"]], truth["further"])
    if name == "mislabel_detection":
        return metrics.mislabel_detection(o.self_scores, data.flipped)
    if name == "backdoor_detection":
        return metrics.backdoor_detection(S, data.triggered)
    if name == "class_detection":
        return metrics.class_detection(S, data.y, data.yq, s=opts.get("s", 10))
    if name == "subclass_detection":
        return metrics.subclass_detection(
            S, data.train_group, data.query_group, s=opts.get("s", 10)
        )
    if name == "topk_cardinality":
        return metrics.topk_cardinality(S, k=opts.get("k", 10))
    if name == "coreset":
        return metrics.coreset_selection(
            S.sum(0),
            recipe,
            data.X,
            data.y,
            data.Xq,
            data.yq,
            budgets=opts.get("budgets", [len(data.X) // 5]),
            seeds=opts.get("seeds", [0, 1]),
            progress=False,
            executor=executor,
        )
    if name == "counterfactual":
        return metrics.counterfactual_sensitivity(
            S,
            recipe,
            data.X,
            data.y,
            data.Xq,
            data.yq,
            k=opts.get("k", 10),
            progress=False,
            executor=executor,
        )
    if name == "reliability" and o.reliable is not None:
        return _Plain("reliability", o.reliable)
    return None


@dataclass
class _Plain:
    name: str
    value: float
    ci: None = None
