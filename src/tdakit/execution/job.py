"""Jobs and their content keys.

A :class:`Job` is a picklable function plus its arguments, with a *content key*: the
sha256 of a canonical description (function name and code, recipe config, data
fingerprints, indices, seeds, ...), never a user-chosen name. Large arguments shared by
many jobs (the training data) are wrapped in :class:`Shared`: sent to each worker once.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tdakit.batching import fingerprint as fingerprint_tensors
from tdakit.errors import ConfigError, require
from tdakit.fingerprints import describe_callable

__all__ = ["Job", "JobFailure", "Shared", "content_key", "describe"]

CACHE_VERSION = 2  # bump when jobs change meaning; old cache entries are then ignored


class Shared:
    """A large job argument (e.g. the training tensors) sent to every worker only once."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self._key: str | None = None

    @property
    def key(self) -> str:
        if self._key is None:
            self._key = content_key(self.value)
        return self._key

    def __repr__(self) -> str:
        return f"Shared({self.key[:12]})"


@dataclass(frozen=True)
class _Ref:
    key: str


def describe(obj: Any) -> Any:
    """A JSON-able canonical description of ``obj`` (tensors by content fingerprint)."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, Shared):
        return {"shared": obj.key}
    if isinstance(obj, torch.Tensor):
        return {"tensor": fingerprint_tensors(obj)}
    if isinstance(obj, np.ndarray):
        return {"tensor": fingerprint_tensors(torch.from_numpy(np.ascontiguousarray(obj)))}
    if isinstance(obj, (torch.device, torch.dtype, Path)):
        return str(obj)
    if isinstance(obj, torch.nn.Module):
        return {"module": describe(dict(obj.state_dict()))}
    if hasattr(obj, "config") and callable(obj.config):
        return {type(obj).__name__: describe(obj.config())}
    if isinstance(obj, Mapping):
        return {str(k): describe(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple, range)):
        return [describe(v) for v in obj]
    if callable(obj):
        return describe_callable(obj)
    try:  # any other picklable object: by its type and the digest of its pickle
        blob = pickle.dumps(obj)
    except Exception:
        blob = None
    if blob is not None:  # the class's code and the instance's state
        return {
            "object": describe_callable(type(obj)),
            "state": hashlib.sha256(blob).hexdigest()[:16],
        }
    raise ConfigError(
        f"Cannot build a content key from a {type(obj).__name__}; give the Job an explicit "
        "describe={...} of JSON-able values (str, numbers, lists, dicts, tensors)."
    )


def content_key(*parts: Any) -> str:
    """Full sha256 hex digest of the canonical description of ``parts``."""
    text = json.dumps(describe(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Job:
    """``fn(*args, **kwargs)`` with a content key.

    ``describe`` (JSON-able, tensors allowed) replaces the arguments in the key when given;
    otherwise the key is built from the arguments themselves. ``name`` labels the job in
    progress bars and error messages.
    """

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    describe: Any = None
    key: str = ""

    def __post_init__(self) -> None:
        require(callable(self.fn), f"Job.fn must be callable, got {type(self.fn).__name__}.")
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        if not self.key:
            content = self.describe if self.describe is not None else [self.args, self.kwargs]
            version = [CACHE_VERSION, torch.__version__]  # numerics may change with torch
            key = content_key(version, describe_callable(self.fn), content)
            object.__setattr__(self, "key", key)
        if not self.name:
            object.__setattr__(self, "name", f"{getattr(self.fn, '__name__', 'job')}")

    def label(self) -> str:
        return f"{self.name} [key {self.key[:12]}]"


@dataclass
class JobFailure:
    """One failed job: its position, label and the error (with the worker's traceback)."""

    index: int
    job: str
    error: str
    details: str = ""


# --- driver side ---------------------------------------------------------------------------
