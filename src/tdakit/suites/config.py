"""Declarative benchmark suites: one TOML file each, validated with clear errors.

A suite names a dataset, a controlled transform (what ground truth is planted), a model, a
training recipe, the methods (registry configurations, optionally with a small grid of
hyperparameters chosen on validation queries) and the metrics::

    name = "digits-mlp-flip"
    seed = 0
    [data]      dataset = "digits", n_train = 600, n_query = 30, n_validation = 10
    [transform] kind = "label_flip", fraction = 0.1
    [model]     name = "mlp", hidden = [32]
    [training]  epochs = 12, lr = 0.05, batch_size = 64
    [[methods]] label = "Grad-Dot", method = "grad_dot"
    [[methods]] label = "Influence (EK-FAC)", method = "influence", solver = "ekfac",
                tune = { damping = [1e-3, 1e-2, 1e-1] }
    [metrics]   names = ["lds", "mislabel_detection"], lds = { n_subsets = 20 }
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from tdakit.errors import ConfigError, require

DATASETS = ("digits", "fashion_mnist", "breast_cancer", "wine", "regression", "text")
TRANSFORMS = ("plain", "label_flip", "shortcut", "backdoor", "class_grouping", "mixed")
METRICS = (
    "lds",
    "further_training",
    "mislabel_detection",
    "backdoor_detection",
    "class_detection",
    "subclass_detection",
    "topk_cardinality",
    "coreset",
    "counterfactual",
    "reliability",
)
TOP = {
    "name",
    "description",
    "seed",
    "data",
    "transform",
    "model",
    "training",
    "methods",
    "metrics",
}
DATA_KEYS = {"dataset", "n_train", "n_query", "n_validation", "seq_len", "vocab"}
TRANSFORM_KEYS = {"kind", "fraction", "target_class", "patch_size", "groups", "noise"}
TRAINING_KEYS = {
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "epochs",
    "steps",
    "batch_size",
    "schedule",
    "lbfgs_iters",
}
METRIC_OPTIONS = {
    "lds": {"n_subsets", "fraction", "n_models"},
    "further_training": {"k", "seeds"},
    "coreset": {"budgets", "seeds"},
    "counterfactual": {"k"},
    "reliability": {"samples"},
    "class_detection": {"s"},
    "subclass_detection": {"s"},
    "topk_cardinality": {"k"},
}


@dataclass(frozen=True)
class MethodSpec:
    """A method of the suite: its label, registry configuration and tuning grid."""

    label: str
    config: dict[str, Any]
    tune: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    """A validated suite (see the module docstring)."""

    name: str
    description: str
    seed: int
    data: dict[str, Any]
    transform: dict[str, Any]
    model: dict[str, Any]
    training: dict[str, Any]
    methods: tuple[MethodSpec, ...]
    metrics: tuple[str, ...]
    metric_options: dict[str, dict[str, Any]]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "data": self.data,
            "transform": self.transform,
            "model": self.model,
            "training": self.training,
            "methods": [{"label": m.label, **m.config, "tune": m.tune} for m in self.methods],
            "metrics": {"names": list(self.metrics), **self.metric_options},
        }


def _check_keys(where: str, got: dict, allowed: set[str]) -> None:
    unknown = sorted(set(got) - allowed)
    require(
        not unknown,
        f"Unknown key(s) {unknown} in [{where}] of the suite; valid keys: {sorted(allowed)}.",
    )


def _table(raw: dict, key: str, default: dict | None = None) -> dict:
    value = raw.get(key, {} if default is None else default)
    require(isinstance(value, dict), f"[{key}] must be a table, got {type(value).__name__}.")
    return dict(value)


def parse(raw: dict[str, Any], source: str = "") -> Suite:
    """Validate a suite given as a dict (the parsed TOML)."""
    require(isinstance(raw, dict), "A suite is a table of settings.")
    _check_keys("top level", raw, TOP)
    require(
        isinstance(raw.get("name"), str) and raw["name"].strip(), 'The suite needs a name = "...".'
    )
    seed = raw.get("seed", 0)
    require(isinstance(seed, int) and seed >= 0, f"seed must be an int >= 0, got {seed!r}.")
    data = _table(raw, "data")
    _check_keys("data", data, DATA_KEYS)
    require(
        data.get("dataset") in DATASETS,
        f"[data] dataset must be one of {DATASETS}, got {data.get('dataset')!r}.",
    )
    for key in ("n_train", "n_query", "n_validation", "seq_len", "vocab"):
        v = data.get(key)
        require(
            v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
            f"[data] {key} must be a positive int, got {v!r}.",
        )
    transform = _table(raw, "transform", {"kind": "plain"})
    _check_keys("transform", transform, TRANSFORM_KEYS)
    require(
        transform.get("kind", "plain") in TRANSFORMS,
        f"[transform] kind must be one of {TRANSFORMS}, got {transform.get('kind')!r}.",
    )
    frac = transform.get("fraction", 0.1)
    require(
        isinstance(frac, (int, float)) and 0 < frac < 1,
        f"[transform] fraction must be in (0, 1), got {frac!r}.",
    )
    model = _table(raw, "model")
    require(isinstance(model.get("name"), str), '[model] needs a name (e.g. "mlp").')
    training = _table(raw, "training")
    _check_keys("training", training, TRAINING_KEYS)
    methods = _methods(raw.get("methods"))
    metrics_raw = _table(raw, "metrics")
    names = metrics_raw.pop("names", ["lds"])
    require(
        isinstance(names, list) and names and all(n in METRICS for n in names),
        f"[metrics] names must be a non-empty list from {METRICS}, got {names!r}.",
    )
    _check_keys("metrics", metrics_raw, set(METRIC_OPTIONS))
    for name, options in metrics_raw.items():
        require(isinstance(options, dict), f"[metrics] {name} must be a table of options.")
        _check_keys(f"metrics.{name}", options, METRIC_OPTIONS[name])
    needs = {
        "mislabel_detection": "label_flip",
        "backdoor_detection": ("backdoor", "shortcut"),
        "subclass_detection": ("class_grouping", "mixed"),
    }
    kind = transform.get("kind", "plain")
    for metric, setups in needs.items():
        require(
            metric not in names or kind in setups,
            f"Metric {metric!r} needs [transform] kind in {setups}, got {kind!r}.",
        )
    return Suite(
        raw["name"],
        str(raw.get("description", "")),
        seed,
        data,
        transform,
        model,
        training,
        methods,
        tuple(names),
        metrics_raw,
        source,
    )


def _methods(raw: Any) -> tuple[MethodSpec, ...]:
    from tdakit.methods.registry import METHODS

    require(isinstance(raw, list) and raw, "The suite needs at least one [[methods]] entry.")
    out, labels = [], set()
    for entry in raw:
        require(isinstance(entry, dict), "Each [[methods]] entry must be a table.")
        entry = dict(entry)
        label, tune = entry.pop("label", None), entry.pop("tune", {})
        require(
            isinstance(label, str) and label not in labels,
            f'Each method needs a unique label = "...", got {label!r}.',
        )
        require(
            entry.get("method") in METHODS,
            f"Method {label!r}: unknown method {entry.get('method')!r}; registered: "
            f"{sorted(METHODS)}.",
        )
        require(
            isinstance(tune, dict) and all(isinstance(v, list) and v for v in tune.values()),
            f"Method {label!r}: tune must map option names to non-empty lists.",
        )
        labels.add(label)
        out.append(MethodSpec(label, entry, tune))
    return tuple(out)


def load(path: str | Path) -> Suite:
    """Read and validate a suite file (TOML), or a built-in suite by name."""
    p = Path(path)
    if not p.suffix and not p.exists():
        p = BUILTIN / f"{path}.toml"
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError as err:
        raise ConfigError(
            f"No suite file {str(path)!r}; give a .toml path or a built-in suite: "
            f"{builtin_names()}."
        ) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"The suite file {p} is not valid TOML: {err}.") from err
    return parse(raw, str(p))


BUILTIN = Path(__file__).parent / "builtin"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN.glob("*.toml"))
