"""Metrics that retrain models: counterfactual sensitivity, coreset selection, model randomisation.

A *recipe* is duck-typed: ``recipe.train(X, y, *, indices=None, init_seed=0, batch_seed=0)``
returns a trained ``nn.Module`` (see :class:`tdakit.groundtruth.TrainingRecipe`; a
further-training recipe that starts from a final model works the same way).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tdakit.errors import require
from tdakit.execution import Executor
from tdakit.losses import cross_entropy, squared_error
from tdakit.metrics import _inputs as check
from tdakit.metrics.functional import spearman_rows
from tdakit.metrics.stats import CONFIDENCE, N_BOOT, MetricResult, bootstrap_ci, compare, summarise
from tdakit.task import eval_mode
from tdakit.training.jobs import train_and_predict
from tdakit.training.loop import seeded_rng
from tdakit.training.recipe import as_recipe

__all__ = [
    "coreset_selection",
    "counterfactual_sensitivity",
    "model_layers",
    "model_randomisation",
    "randomised_copy",
]


def _outputs(model: nn.Module, X: Tensor) -> Tensor:
    require(isinstance(model, nn.Module), "recipe.train must return an nn.Module.")
    device = next(iter(model.parameters()), torch.empty(0)).device
    with torch.no_grad(), eval_mode(model):
        return model(X.to(device)).detach().double().cpu()


def _loss_fn(loss: str | Callable | None, recipe: object) -> Callable:
    loss = getattr(recipe, "loss", None) if loss is None else loss
    loss = "cross_entropy" if loss is None else loss  # e.g. a FunctionRecipe without a loss
    if callable(loss):
        return loss
    table = {"cross_entropy": cross_entropy, "mse": squared_error}
    require(loss in table, f"loss must be 'cross_entropy', 'mse' or a callable, got {loss!r}.")
    return table[loss]


def _evaluate(out: Tensor, y: Tensor, loss_fn: Callable) -> dict[str, Tensor]:
    """Per-example loss, and (for class logits) the prediction and predictive entropy."""
    res = {"loss": loss_fn(out, y.to(out.device)).double()}
    if out.ndim == 2 and out.shape[1] >= 2 and not y.is_floating_point():
        logp = torch.log_softmax(out, dim=1)
        res["pred"] = out.argmax(1)
        res["entropy"] = -(logp.exp() * logp).sum(1)
        res["probs"] = logp.exp()
    return res


def counterfactual_sensitivity(
    S_or_idx: Tensor,
    recipe: object,
    X: Tensor,
    y: Tensor,
    X_query: Tensor,
    y_query: Tensor,
    *,
    k: int = 10,
    loss: str | Callable | None = None,
    init_seed: int = 0,
    batch_seed: int = 0,
    random_seed: int = 0,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    progress: bool = True,
    executor: Executor | None = None,
) -> MetricResult:
    """Remove each query's top-k training examples, retrain, and measure what changes.

    For every query q: train on ``D`` minus the method's top-``k`` for q, with the same
    ``init_seed``/``batch_seed`` as the full-data model, and compare with the full-data
    model on q: change in the query's loss (value; larger is better), prediction flip and
    change in predictive entropy (classification). Baseline: k random examples per query
    (seeded by ``random_seed`` and q). Costs ``2 * n_query + 1`` trainings, run through
    ``executor`` (default: in this process; ``tda.Executor(...)`` for parallel, cached jobs).

    ``S_or_idx``: scores ``[n_query, n_train]`` or ranked indices ``[n_query, >=k]``.
    ``loss``: per-example ``loss(outputs, targets)``; defaults to ``recipe.loss`` or
    cross-entropy. ``details``: ``random`` (same statistics for random-k), ``vs_random``
    (paired comparison of the loss change), ``flip_rate``, ``delta_entropy``,
    ``delta_prob`` (change of the full model's predicted-class probability) and their
    random counterparts, each with a bootstrap CI over queries.
    """
    recipe = as_recipe(recipe)
    Xt, yt, Xq, yq = (
        check.tensor(v, n)
        for v, n in ((X, "X"), (y, "y"), (X_query, "X_query"), (y_query, "y_query"))
    )
    n, nq = len(Xt), len(Xq)
    require(n > 0 and len(yt) == n, f"X ({n}) and y ({len(yt)}) must be non-empty, equal length.")
    require(len(yq) == nq and nq > 0, "X_query and y_query must be non-empty with equal length.")
    top = check.ranked(S_or_idx, k, n, "S_or_idx")
    require(top.shape[0] == nq, f"S_or_idx has {top.shape[0]} rows but there are {nq} queries.")
    k = top.shape[1]
    require(k < n, f"k={k} would remove the whole training set ({n} examples).")
    loss_fn = _loss_fn(loss, recipe)

    def kept(drop: Tensor) -> Tensor:
        keep = torch.ones(n, dtype=torch.bool)
        keep[drop] = False
        return torch.nonzero(keep).flatten()

    plan = [(None, init_seed, batch_seed)]
    for q in range(nq):
        gen = torch.Generator().manual_seed(int(random_seed) * 1_000_003 + q)
        plan += [
            (kept(top[q]), init_seed, batch_seed),
            (kept(torch.randperm(n, generator=gen)[:k]), init_seed, batch_seed),
        ]
    executor = executor or Executor(backend="serial", progress=progress)
    outs = train_and_predict(recipe, Xt, yt, Xq, plan, executor, desc="counterfactual")
    full = _evaluate(outs[0], yq, loss_fn)
    runs: dict[str, list[dict[str, Tensor]]] = {"method": [], "random": []}
    for q in range(nq):
        for which, out in zip(("method", "random"), outs[1 + 2 * q : 3 + 2 * q], strict=True):
            runs[which].append(_evaluate(out[q : q + 1], yq[q : q + 1], loss_fn))

    kw = {"n_boot": n_boot, "confidence": confidence, "seed": seed}
    details: dict = {
        "k": k,
        "init_seed": init_seed,
        "batch_seed": batch_seed,
        "random_seed": random_seed,
    }
    results = {}
    for which, rs in runs.items():
        after = {key: torch.cat([r[key] for r in rs]) for key in rs[0]}
        suffix = "" if which == "method" else "_random"
        results[which] = summarise("counterfactual_sensitivity", after["loss"] - full["loss"], **kw)
        if "pred" in after:
            flips = (after["pred"] != full["pred"]).double()
            delta_h = after["entropy"] - full["entropy"]
            details[f"flip_rate{suffix}"] = float(flips.mean())
            details[f"flip_rate{suffix}_ci"] = bootstrap_ci(flips, **kw)
            details[f"delta_entropy{suffix}"] = float(delta_h.mean())
            details[f"delta_entropy{suffix}_ci"] = bootstrap_ci(delta_h, **kw)
            details[f"flips{suffix}"], details[f"delta_entropy{suffix}_per_query"] = flips, delta_h
            # change in the probability of the class the full-data model predicted
            delta_p = (after["probs"] - full["probs"]).gather(1, full["pred"][:, None]).squeeze(1)
            details[f"delta_prob{suffix}"] = float(delta_p.mean())
            details[f"delta_prob{suffix}_ci"] = bootstrap_ci(delta_p, **kw)
    details["random"] = results["random"]
    details["vs_random"] = compare(results["method"], results["random"], **kw)
    r = results["method"]
    return MetricResult(r.name, r.value, r.ci, r.per_query, r.n, {**r.details, **details})


def _ranking(scores_or_ranking: Tensor, n: int, need: int) -> Tensor:
    t = check.tensor(scores_or_ranking, "scores_or_ranking")
    require(
        t.ndim == 1,
        f"scores_or_ranking must be 1-D: scores [n_train] or a ranking of indices, got shape "
        f"{tuple(t.shape)}; aggregate a score matrix first, e.g. S.sum(0).",
    )
    if t.is_floating_point():
        t = check.floats(t, "scores_or_ranking", 1, (n,))
        return torch.argsort(t, descending=True, stable=True)
    idx = check.labels(t, "scores_or_ranking")
    require(
        len(idx) >= need and bool(((idx >= 0) & (idx < n)).all()) and len(idx.unique()) == len(idx),
        f"A ranking must list at least {need} distinct training indices in [0, {n}) "
        "(all of them with per_class=True, which re-ranks every example).",
    )
    return idx


def interleave_classes(order: Tensor, labels: Tensor) -> Tensor:
    """``order`` (a ranking of all examples) re-ranked round-robin over the classes: every
    class's first, then every class's second, ...; ties within a round in label order."""
    classes, cls = labels[order].unique(return_inverse=True)  # class position, in ``order``
    within = torch.zeros(len(order), dtype=torch.long)  # rank within its class
    for c in range(len(classes)):
        mask = cls == c
        within[mask] = torch.arange(int(mask.sum()))
    return order[torch.argsort(within * len(classes) + cls, stable=True)]


def coreset_selection(
    scores_or_ranking: Tensor,
    recipe: object,
    X: Tensor,
    y: Tensor,
    X_test: Tensor,
    y_test: Tensor,
    budgets: Sequence[int],
    seeds: Sequence[int] = (0, 1, 2),
    *,
    per_class: bool = False,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    progress: bool = True,
    executor: Executor | None = None,
) -> MetricResult:
    """Test accuracy of models trained on the method's top-``budget`` examples vs random subsets.

    ``per_class=True`` keeps the classes balanced (equal counts per class, the lowest
    labels first when a budget is not a multiple of the number of classes): the ranking
    takes each class's best, then each class's second best, and so on, and the random
    subsets are drawn the same way from per-class permutations. It re-ranks all examples,
    so a ranking of indices must then list every example. Summed scores otherwise tend to
    concentrate on a few classes.

    ``scores_or_ranking``: per-example scores ``[n_train]`` (higher = keep first; e.g.
    ``S.sum(0)`` over validation queries) or a ranking of indices, best first. For each
    budget b and seed s: train on the top b (``init_seed = batch_seed = s``) and on a random
    b-subset (drawn with seed s), measure test accuracy. Value: mean accuracy over all
    (budget, seed) runs (per_query = these runs, budget-major, so :func:`compare` pairs two
    methods run with the same budgets and seeds). ``details``: per budget ``accuracy``,
    ``random_accuracy``, ``gain`` (method − random) with bootstrap CIs over seeds
    (``[B, 2]``), and the raw ``[B, n_seeds]`` runs. Higher is better.
    """
    recipe = as_recipe(recipe)
    Xt, yt = check.tensor(X, "X"), check.tensor(y, "y")
    Xs, ys = check.tensor(X_test, "X_test"), check.labels(y_test, "y_test")
    n = len(Xt)
    require(n > 0 and len(yt) == n, "X and y must be non-empty with equal length.")
    require(len(Xs) == len(ys), "X_test and y_test must have equal length.")
    budgets = [check.positive_int(b, "budget", n) for b in budgets]
    seeds = [int(s) for s in seeds]
    require(len(budgets) > 0 and len(seeds) > 0, "Give at least one budget and one seed.")
    order = _ranking(scores_or_ranking, n, n if per_class else max(budgets))
    labels = check.labels(yt, "y") if per_class else None
    if labels is not None:
        order = interleave_classes(order, labels)
    acc = torch.zeros(2, len(budgets), len(seeds), dtype=torch.float64)
    plan, slots = [], []
    for bi, b in enumerate(budgets):
        for si, s in enumerate(seeds):
            gen = torch.Generator().manual_seed(s * 1_000_003 + b)
            rand = torch.randperm(n, generator=gen)
            if labels is not None:
                rand = interleave_classes(rand, labels)
            for which, idx in enumerate((order[:b], rand[:b])):
                plan.append((idx, s, s))
                slots.append((which, bi, si))
    executor = executor or Executor(backend="serial", progress=progress)
    outs = train_and_predict(recipe, Xt, yt, Xs, plan, executor, desc="coreset")
    for (which, bi, si), out in zip(slots, outs, strict=True):
        acc[which, bi, si] = (out.argmax(1) == ys).double().mean()
    kw = {"n_boot": n_boot, "confidence": confidence, "seed": 0}
    details = {
        "budgets": budgets,
        "seeds": seeds,
        "accuracy": acc[0].mean(1),
        "accuracy_ci": bootstrap_ci(acc[0].T, **kw),
        "random_accuracy": acc[1].mean(1),
        "random_accuracy_ci": bootstrap_ci(acc[1].T, **kw),
        "gain": (acc[0] - acc[1]).mean(1),
        "gain_ci": bootstrap_ci((acc[0] - acc[1]).T, **kw),
        "accuracy_runs": acc[0],
        "random_accuracy_runs": acc[1],
    }
    return summarise("coreset_accuracy", acc[0].flatten(), what="runs", details=details, **kw)


def model_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters, output side first (the cascading order)."""
    owners = [
        name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))
    ]
    return owners[::-1]


def randomised_copy(
    model: nn.Module, *, layers: Sequence[str] | None = None, seed: int = 0
) -> nn.Module:
    """A deep copy of ``model`` with the parameters of ``layers`` (default: all) redrawn.

    Each layer is re-initialised by its own ``reset_parameters`` (else ``N(0, std)`` with
    the parameter's current std) under the RNG seeded with ``seed * 1_000_003 + j``, j the
    layer's position in :func:`model_layers`; so a layer gets the same draw whichever
    other layers are randomised with it. Buffers (e.g. BatchNorm statistics) are kept.
    """
    order = model_layers(model)
    chosen = order if layers is None else list(layers)
    unknown = [name for name in chosen if name not in order]
    require(not unknown, f"Unknown layers {unknown}; layers with parameters: {order}.")
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    for name in chosen:
        _reinitialise(modules[name], seed * 1_000_003 + order.index(name))
    return model


def _reinitialise(module: nn.Module, seed: int) -> None:
    buffers = {n: b.clone() for n, b in module.named_buffers(recurse=False)}
    device = next(module.parameters(recurse=False)).device
    with torch.no_grad(), seeded_rng(int(seed), device):
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            for p in module.parameters(recurse=False):
                std = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 1.0
                p.normal_(0.0, std)
        for n, b in buffers.items():
            getattr(module, n).copy_(b)


def model_randomisation(
    method_factory: Callable,
    task: object,
    train: object,
    queries: object,
    *,
    cascading: bool = False,
    seed: int = 0,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    progress: bool = True,
) -> MetricResult:
    """Spearman between the attributions of the trained model and of a randomised one.

    ``method_factory(task) -> AttributionMethod`` builds the method (unfitted) for a task;
    it is fitted on ``train`` and scores ``queries`` for the trained model and for a copy
    whose parameters are re-initialised (each layer's own initialiser, seeded by ``seed``
    and the layer's position; buffers such as BatchNorm statistics are kept). Per query:
    Spearman over training examples; value: mean over queries. Lower is better (a method
    that ignores the model scores 1). ``cascading=True`` randomises layer by layer from the
    output side, cumulatively; ``details["per_layer"]`` holds one result per step
    (``details["layers"]`` names them) and the value is the last step (all layers).
    """
    from tdakit.task import Task

    require(isinstance(task, Task), f"task must be a tdakit.Task, got {type(task).__name__}.")
    require(callable(method_factory), "method_factory must be a callable task -> method.")
    reference = method_factory(task).fit(train).scores(queries).detach().double().cpu()
    layers = model_layers(task.model)
    steps = [layers] if not cascading else [layers[: j + 1] for j in range(len(layers))]
    kw = {"n_boot": n_boot, "confidence": confidence, "seed": seed}
    per_layer: list[MetricResult] = []
    for names in tqdm(steps, desc="randomise", disable=not progress or len(steps) == 1):
        model = randomised_copy(task.model, layers=names, seed=seed)
        scores = method_factory(task.at(model)).fit(train).scores(queries)
        rho = spearman_rows(reference, scores.detach().double().cpu())
        details = {"abs_spearman": float(rho.abs().nanmean()), "randomised": names}
        per_layer.append(
            summarise("model_randomisation", rho, higher_is_better=False, details=details, **kw)
        )
    last = per_layer[-1]
    details = {**last.details, "cascading": cascading, "layers": layers}
    if cascading:
        details["per_layer"] = per_layer
        details["spearman_by_layer"] = torch.tensor([r.value for r in per_layer])
    return MetricResult(last.name, last.value, last.ci, last.per_query, last.n, details, False)
