"""Every attribution method by name, and methods rebuilt from plain configuration.

>>> config = tda.InfluenceFunction(task, solver="cg").to_config()
>>> config
{'method': 'influence', 'solver': {'name': 'cg', 'tol': 1e-06, ...}, ...}
>>> method = tda.methods.from_config(config, other_task)   # the same method, another model
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from tdakit.errors import ConfigError, require

if TYPE_CHECKING:
    from tdakit.methods.base import AttributionMethod
    from tdakit.task import Task

METHODS: dict[str, type[AttributionMethod]] = {}
T = TypeVar("T")


def register(cls: T) -> T:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    name = cls.name  # type: ignore[attr-defined]
    require(bool(name), f"{cls!r} needs a registry name.")
    require(
        name not in METHODS or METHODS[name] is cls,
        f"A method named {name!r} is already registered ({METHODS.get(name)}).",
    )
    METHODS[name] = cls  # type: ignore[assignment]
    return cls


def get_method(name: str) -> type[AttributionMethod]:
    """The method class registered as ``name``."""
    if name not in METHODS:
        raise ConfigError(f"Unknown method {name!r}; registered methods: {sorted(METHODS)}.")
    return METHODS[name]


def from_config(config: dict[str, Any], task: Task | None, **runtime: Any) -> AttributionMethod:
    """Build the method described by ``config`` (from ``to_config``) on ``task``.

    ``runtime`` supplies the objects a config leaves out (``checkpoints=`` for TracIn,
    ``recipe=`` or ``checkpoints=`` for TRAK).
    """
    require(
        isinstance(config, dict) and "method" in config,
        f"A method config is a dict with a 'method' name, got {config!r}.",
    )
    cls = get_method(config["method"])
    options = {k: v for k, v in config.items() if k != "method"}
    allowed = set(_params(cls))
    unknown = sorted(set(options) - allowed)
    require(
        not unknown, f"Unknown option(s) {unknown} for {cls.__name__}; allowed: {sorted(allowed)}."
    )
    try:
        return cls(task, **options, **runtime)  # type: ignore[call-arg]
    except TypeError as err:
        raise ConfigError(
            f"Cannot build {cls.__name__} from {config}: {err}. Objects that are not "
            f"configuration ({list(cls.runtime_params)}) are passed as keyword arguments."
        ) from err


def _params(cls: type) -> list[str]:
    import inspect

    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.name not in ("self", "task") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                names.append(p.name)
    return names
