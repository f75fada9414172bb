"""What identifies a callable in a content key: its qualified name and a digest of its code.

Two different lambdas, or a function whose body changed, never share a cache entry.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any


def code_digest(fn: object) -> str:
    """A short sha256 of a callable's source (or bytecode), its qualified name and, for
    callable objects, their attributes' reprs."""
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn)
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        source = "" if code is None else code.co_code.hex() + repr(code.co_consts)
    state = (
        "" if inspect.isfunction(fn) or inspect.isclass(fn) else repr(getattr(fn, "__dict__", ""))
    )
    text = f"{qualified_name(fn)}|{source}|{state}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def qualified_name(fn: object) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def describe_callable(fn: Any) -> Any:
    """A stable, JSON-able description of a callable (``functools.partial`` unpacked)."""
    if isinstance(fn, functools.partial):
        return {
            "partial": describe_callable(fn.func),
            "args": [repr(a) for a in fn.args],
            "kwargs": {k: repr(v) for k, v in sorted(fn.keywords.items())},
        }
    return {"name": qualified_name(fn), "code": code_digest(fn)}
