"""What identifies a callable in a content key: its qualified name and a digest of its code.

Two different lambdas, or a function whose body changed, never share a cache entry.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any


def code_digest(fn: object, _depth: int = 0) -> str:
    """A short sha256 of what a callable computes: its qualified name, source, bytecode and
    constants, default arguments and closure values (two lambdas on one line, or one
    closure over different values, differ), and for callable objects their attributes."""
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn)
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError):
        source = ""
    func = getattr(fn, "__func__", fn)
    code = getattr(func, "__code__", None)
    parts = [qualified_name(fn), source]
    if code is not None:
        parts += [code.co_code.hex(), repr(code.co_consts), repr(code.co_names)]
        parts.append(repr(getattr(func, "__defaults__", None)))
        cells = getattr(func, "__closure__", None) or ()
        parts.append(repr([_cell(c, _depth) for c in cells]))
    if not (inspect.isfunction(fn) or inspect.isclass(fn)):
        parts.append(repr(getattr(fn, "__dict__", "")))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _cell(cell: object, depth: int) -> str:
    try:
        value = cell.cell_contents  # type: ignore[attr-defined]
    except ValueError:
        return "<empty>"
    if callable(value):  # bounded: a closure may refer to itself
        return code_digest(value, depth + 1) if depth < 3 else qualified_name(value)
    return repr(value)


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
