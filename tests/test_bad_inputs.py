"""The bad-input suite: every case raises the right TdakitError subclass with a message that
names the fix (never a raw traceback, never a silently wrong result)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
)

import tdakit as tda
from conftest import tiny_data, tiny_mlp
from tdakit import metrics
from tdakit.errors import ConfigError, DataError, NotFittedError, NumericalError, StoreError

X, Y = tiny_data()
T = TensorDataset(X, Y)


def task(**kw) -> tda.Task:
    return tda.Task(tiny_mlp(), **kw)


def fit(data, method=tda.GradDot, **kw):
    return method(task(), **kw).fit(data)


def fitted(method=tda.GradDot, **kw):
    return method(task(), **kw).fit((X, Y))


class NoLen(Dataset):
    def __getitem__(self, i):
        return X[i], Y[i]


class Stream(IterableDataset):
    def __iter__(self):
        return iter(zip(X, Y, strict=True))


class Dicts(Dataset):
    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        return {"x": X[i], "target_class": Y[i]}


class Words(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3).double()

    def forward(self, x):
        return "three logits"


def nan_model() -> nn.Module:
    m = tiny_mlp()
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    return m


def mean_loss(out, y):
    return nn.functional.cross_entropy(out, y)  # one number, not one per example


def flip(y):
    y = y.clone()
    y[3] = -100
    return y


def too_big(y):
    y = y.clone()
    y[0] = 7
    return y


def other_arch():
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double().state_dict()


def indefinite():
    tda.InfluenceFunction(task(), solver="exact", damping=0.0).fit((X, Y))


def recipe(**kw):
    return tda.TrainingRecipe("linear", **kw)


def loo(**kw):
    return tda.groundtruth.leave_one_out(
        recipe(epochs=1),
        (X.float(), Y),
        (X[:2].float(), Y[:2]),
        executor=tda.Executor(backend="serial", progress=False),
        **kw,
    )


def lds(S, masks=None, losses=None):
    masks = torch.ones(4, 30, dtype=torch.bool) if masks is None else masks
    losses = torch.randn(4, 2, dtype=torch.float64) if losses is None else losses
    return metrics.lds(S, masks, losses)


def store(tmp, **kw):
    return tda.storage.FeatureStore.open(tmp, **kw)


def broken_manifest(tmp):
    tmp.mkdir()
    (tmp / "manifest.json").write_text("{not json")
    return tda.storage.FeatureStore.load(tmp)


def mismatch(tmp):
    tda.storage.FeatureStore.open(tmp, 4, 2)
    tda.storage.FeatureStore.open(tmp, 5, 2)


def file_cache(tmp):
    tmp.write_text("x")
    tda.execution.run_jobs([tda.execution.Job(abs, (1,))], backend="serial", cache_dir=tmp)


CASES = [
    # --- the Task -----------------------------------------------------------------------
    ("not a module", lambda: tda.Task(lambda x: x), ConfigError, "torch.nn.Module"),
    ("unknown loss", lambda: task(loss="hinge"), ConfigError, "use one of"),
    ("unknown measurement", lambda: task(measurement="acc"), ConfigError, "use one of"),
    ("bool measurement", lambda: task(measurement=True), ConfigError, "logit index"),
    ("negative logit", lambda: task(measurement=-1), ConfigError, ">= 0"),
    ("empty params", lambda: task(params=[]), ConfigError, "name at least one"),
    ("unknown params", lambda: task(params=["fc"]), ConfigError, "modules with parameters"),
    ("params word", lambda: task(params="some"), ConfigError, "'all', 'last_layer'"),
    ("batch hook", lambda: task(batch=3), ConfigError, "callable"),
    ("output hook", lambda: task(output="logits"), ConfigError, "callable"),
    (
        "frozen model",
        lambda: tda.Task(tiny_mlp().requires_grad_(False)),
        ConfigError,
        "no trainable parameters",
    ),
    (
        "last_layer unbound",
        lambda: task(params="last_layer").param_names,
        ConfigError,
        "fit a method first",
    ),
    # --- data -------------------------------------------------------------------------------
    ("empty data", lambda: fit((X[:0], Y[:0])), DataError, "at least one example"),
    ("length mismatch", lambda: fit((X, Y[:-1])), DataError, "one to one"),
    ("nan inputs", lambda: fit((X.clone().fill_(float("nan")), Y)), DataError, "impute"),
    ("float labels", lambda: fit((X, Y.double())), DataError, r"y\.long\(\)"),
    ("bool labels", lambda: fit((X, Y > 0)), DataError, r"y\.long\(\)"),
    ("label -100", lambda: fit((X, flip(Y))), DataError, "drop those examples or relabel"),
    ("label >= C", lambda: fit((X, too_big(Y))), DataError, r"lie in \[0, 3\)"),
    ("dtype mismatch", lambda: fit((X.float(), Y)), DataError, r"cast them with X\.to"),
    ("integer inputs", lambda: fit((X.long(), Y)), DataError, "Check the input shapes and dtypes"),
    ("shuffling loader", lambda: fit(DataLoader(T, shuffle=True)), DataError, "shuffle=False"),
    (
        "drop_last",
        lambda: fit(DataLoader(T, batch_size=7, drop_last=True)),
        DataError,
        "drop_last=False",
    ),
    (
        "subset sampler",
        lambda: fit(DataLoader(T, sampler=SubsetRandomSampler(range(5)))),
        DataError,
        "sequential sampler",
    ),
    (
        "batch sampler",
        lambda: fit(DataLoader(T, batch_sampler=BatchSampler(RandomSampler(T), 4, False))),
        DataError,
        "sequential sampler",
    ),
    ("iterable dataset", lambda: fit(DataLoader(Stream())), DataError, "map-style Dataset"),
    ("dataset without len", lambda: fit(NoLen()), DataError, "map-style Dataset"),
    ("unsupported data", lambda: fit("train.csv"), DataError, r"Pass a tuple \(X, y\)"),
    ("dict without labels", lambda: fit(Dicts()), DataError, "under 'labels'"),
    (
        "model returns str",
        lambda: tda.GradDot(tda.Task(Words())).fit((X, Y)),
        DataError,
        r"Task\(\.\.\., output=fn\)",
    ),
    (
        "logit out of range",
        lambda: tda.GradDot(task(measurement=9)).fit((X, Y)),
        ConfigError,
        r"index in \[0, 3\)",
    ),
    (
        "loss not per example",
        lambda: tda.GradDot(task(loss=mean_loss)).fit((X, Y)),
        ConfigError,
        "reduction='none'",
    ),
    # --- method options ---------------------------------------------------------------------
    ("batch_size 0", lambda: tda.GradDot(task(), batch_size=0), ConfigError, "positive int"),
    ("projection True", lambda: tda.GradDot(task(), projection=True), ConfigError, "positive int"),
    ("projection 0", lambda: tda.GradDot(task(), projection=0), ConfigError, "positive int"),
    ("storage", lambda: tda.GradDot(task(), storage="disk"), ConfigError, "use one of"),
    (
        "empty cache_dir",
        lambda: tda.GradDot(task(), cache_dir=""),
        ConfigError,
        "give a directory name",
    ),
    ("max_memory", lambda: tda.GradDot(task(), max_memory=-1), ConfigError, "number of bytes"),
    ("progress", lambda: tda.GradDot(task(), progress="yes"), ConfigError, "True or False"),
    (
        "not fitted",
        lambda: tda.GradDot(task()).scores((X, Y)),
        NotFittedError,
        r"call \.fit\(train\) first",
    ),
    ("k bool", lambda: fitted().top_k((X, Y), k=True), ConfigError, "k must be an int"),
    ("k zero", lambda: fitted().top_k((X, Y), k=0), ConfigError, "between 1 and"),
    ("k too big", lambda: fitted().top_k((X, Y), k=31), ConfigError, r"\(30\)"),
    (
        "per_model",
        lambda: list(fitted().iter_blocks((X, Y), per_model=True)),
        ConfigError,
        "TracIn and TRAK",
    ),
    ("tracin empty", lambda: tda.TracIn(task(), [], 0.1), ConfigError, "at least one checkpoint"),
    (
        "tracin lrs",
        lambda: tda.TracIn(task(), [tiny_mlp()] * 2, [0.1]),
        ConfigError,
        "one learning rate per checkpoint",
    ),
    (
        "tracin lr sign",
        lambda: tda.TracIn(task(), [tiny_mlp()], -1.0),
        ConfigError,
        "positive and finite",
    ),
    (
        "tracin architecture",
        lambda: tda.TracIn(task(), [other_arch()], 0.1),
        ConfigError,
        "same architecture",
    ),
    (
        "unknown solver",
        lambda: tda.InfluenceFunction(task(), solver="newton"),
        ConfigError,
        "use one of",
    ),
    (
        "influence projection",
        lambda: tda.InfluenceFunction(task(), projection=8),
        ConfigError,
        r"Projected\(dim=k\)",
    ),
    (
        "solver curvature",
        lambda: tda.InfluenceFunction(task(), solver="kfac", curvature="hessian"),
        ConfigError,
        "works with curvature",
    ),
    ("negative damping", lambda: tda.InfluenceFunction(task(), damping=-1.0), ConfigError, ">= 0"),
    (
        "nan damping",
        lambda: tda.InfluenceFunction(task(), damping=float("nan")),
        ConfigError,
        "finite",
    ),
    ("cg tol", lambda: tda.solvers.CG(tol=-1.0), ConfigError, "tol must be"),
    ("cg max_iter", lambda: tda.solvers.CG(max_iter=0), ConfigError, "max_iter must be"),
    ("lissa depth", lambda: tda.solvers.LiSSA(depth=0), ConfigError, "depth must be"),
    (
        "arnoldi complement",
        lambda: tda.solvers.Arnoldi(complement="x"),
        ConfigError,
        "must be one of",
    ),
    (
        "relative estimate",
        lambda: tda.solvers.Relative(0.1, estimate="magic"),
        ConfigError,
        "use one of",
    ),
    (
        "old flat option",
        lambda: tda.InfluenceFunction(task(), solver="cg", rank=10),
        ConfigError,
        "solver",
    ),
    (
        "exact too large",
        lambda: tda.InfluenceFunction(task(), solver=tda.solvers.Exact(max_params=10)).fit((X, Y)),
        ConfigError,
        "solver='cg'",
    ),
    ("indefinite hessian", indefinite, NumericalError, "larger damping"),
    (
        "trak custom loss",
        lambda: tda.TRAK(task(loss=functools.partial(mean_loss)), checkpoints=[tiny_mlp()]),
        ConfigError,
        "Use GradDot or InfluenceFunction",
    ),
    (
        "trak two ensembles",
        lambda: tda.TRAK(task(), checkpoints=[tiny_mlp()], recipe=recipe()),
        ConfigError,
        "exactly one",
    ),
    (
        "trak subset",
        lambda: tda.TRAK(task(), checkpoints=[tiny_mlp()], subset="quarter"),
        ConfigError,
        "'full' or 'half'",
    ),
    (
        "representer l2",
        lambda: tda.RepresenterPoints(task(), l2=0.0),
        ConfigError,
        "positive finite",
    ),
    (
        "representer layer",
        lambda: tda.RepresenterPoints(task(), layer="0").fit((X, Y)),
        ConfigError,
        "final nn.Linear",
    ),
    (
        "similarity",
        lambda: tda.RepresentationSimilarity(task(), similarity="l2"),
        ConfigError,
        "'cos' or 'dot'",
    ),
    (
        "nan weights similarity",
        lambda: tda.RepresentationSimilarity(tda.Task(nan_model())).fit((X, Y)),
        NumericalError,
        "check the model's weights",
    ),
    (
        "nan weights gradients",
        lambda: tda.GradDot(tda.Task(nan_model())).fit((X, Y)),
        NumericalError,
        "model's weights",
    ),
    (
        "unknown method",
        lambda: tda.from_config({"method": "shapley"}, task()),
        ConfigError,
        "registered methods",
    ),
    (
        "unknown option",
        lambda: tda.from_config({"method": "grad_dot", "rank": 3}, task()),
        ConfigError,
        "allowed",
    ),
    (
        "information features",
        lambda: tda.InformationLoss(task(), features="x"),
        ConfigError,
        "'tangent' or 'gradient'",
    ),
    ("index backend", lambda: fitted().build_index("annoy"), ConfigError, "use one of"),
    # --- metrics ----------------------------------------------------------------------------
    (
        "lds shapes",
        lambda: lds(torch.randn(3, 30, dtype=torch.float64)),
        DataError,
        "same queries and training examples",
    ),
    (
        "lds nan",
        lambda: lds(torch.full((2, 30), float("nan"), dtype=torch.float64)),
        DataError,
        "fix the scores",
    ),
    (
        "lds int scores",
        lambda: lds(torch.ones(2, 30, dtype=torch.long)),
        DataError,
        r"\.double\(\)",
    ),
    (
        "detection fraction > 1",
        lambda: metrics.mislabel_detection(
            torch.randn(30, dtype=torch.float64), torch.arange(30) < 5, fractions=(1.5,)
        ),
        ConfigError,
        r"lie in \[0, 1\]",
    ),
    (
        "detection fraction < 0",
        lambda: metrics.mislabel_detection(
            torch.randn(30, dtype=torch.float64), torch.arange(30) < 5, fractions=(-0.2,)
        ),
        ConfigError,
        r"fractions=\(0.05",
    ),
    (
        "detection all flipped",
        lambda: metrics.mislabel_detection(
            torch.randn(30, dtype=torch.float64), torch.ones(30, dtype=torch.bool)
        ),
        ConfigError,
        "at least one but not all",
    ),
    (
        "mask not bool",
        lambda: lds(torch.randn(2, 30, dtype=torch.float64), masks=torch.ones(4, 30)),
        DataError,
        r"\.bool\(\)",
    ),
    # --- ground truth, training, execution --------------------------------------------------
    ("loo removed range", lambda: loo(removed=[99]), ConfigError, r"must lie in \[0, 30\)"),
    (
        "loo removed bool",
        lambda: loo(removed=torch.ones(30, dtype=torch.bool)),
        ConfigError,
        "integer positions",
    ),
    (
        "loo task and measurement",
        lambda: loo(task=task(), measurement="margin"),
        ConfigError,
        "not both",
    ),
    (
        "subset fraction",
        lambda: tda.groundtruth.subset_masks(30, 5, 1.5),
        ConfigError,
        r"in \(0, 1\)",
    ),
    ("recipe lr", lambda: recipe(lr=0.0), ConfigError, "lr must be"),
    (
        "recipe lambda model",
        lambda: tda.TrainingRecipe(lambda s: nn.Linear(5, 3)),
        ConfigError,
        "module-level function",
    ),
    (
        "recipe lambda loss",
        lambda: recipe(loss=lambda o, y: o.sum(1)),
        ConfigError,
        "module-level function",
    ),
    ("recipe optimizer", lambda: recipe(optimizer="rmsprop"), ConfigError, "use one of"),
    ("not a recipe", lambda: tda.training.as_recipe(42), ConfigError, "function train"),
    ("executor backend", lambda: tda.Executor(backend="slurm"), ConfigError, "use"),
    ("cache dir is a file", None, StoreError, "writable directory"),
    # --- stores and indexes -----------------------------------------------------------------
    ("store dim", None, ConfigError, "positive integer"),
    ("store missing", None, StoreError, "fill it first"),
    ("store manifest", None, StoreError, r"FeatureStore\.clear"),
    ("store mismatch", None, StoreError, "Use a different cache directory"),
    (
        "faiss missing",
        lambda: tda.scoring.index.FaissIndex.open("/nonexistent"),
        StoreError,
        "build it first",
    ),
    # --- reliability ------------------------------------------------------------------------
    ("one sample", lambda: tda.reliability.Retraining(recipe(), 1), ConfigError, ">= 2"),
    (
        "correction",
        lambda: tda.reliability.correct(torch.rand(3), "holm"),
        ConfigError,
        "must be one of",
    ),
    (
        "accumulator shape",
        lambda: _accumulate([torch.zeros(2, 2), torch.zeros(3)]),
        DataError,
        "expected",
    ),
]


def _accumulate(samples):
    acc = tda.reliability.Accumulator()
    for s in samples:
        acc.add(s)


TMP_CASES = {
    "cache dir is a file": file_cache,
    "store dim": lambda p: store(p, n_rows=4, dim=0),
    "store missing": lambda p: tda.storage.FeatureStore.load(p),
    "store manifest": broken_manifest,
    "store mismatch": mismatch,
}


@pytest.mark.parametrize(("name", "call", "error", "fix"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, call, error, fix, tmp_path):
    with pytest.raises(error, match=fix) as info:
        if call is None:
            TMP_CASES[name](tmp_path / "x")
        else:
            call()
    assert type(info.value) is error or issubclass(type(info.value), error)


def test_the_suite_is_large_and_distinct():
    names = [c[0] for c in CASES]
    assert len(names) >= 80 and len(set(names)) == len(names)
