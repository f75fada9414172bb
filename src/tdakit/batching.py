"""Batches as users' DataLoaders yield them: tensors, tuples, dicts, Hugging Face
``BatchEncoding``. A batch is split into model *inputs* (a tensor, a tuple of positional
tensors, or a dict of keyword tensors) and *targets* ``[B, ...]``.

Inputs are small pytrees (tensor / tuple / list / dict leaves); every tensor leaf has the
batch as its first dimension. The helpers here map, slice, move and hash them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from tdakit.errors import DataError, require

Inputs = Any  # torch.Tensor | tuple | list | dict of tensors (nested)
TARGET_KEYS = ("labels", "label", "targets", "target", "y")


def default_split(batch: Any) -> tuple[Inputs, torch.Tensor]:
    """``(x, y, ...)`` -> ``(x, y)``; a mapping -> ``(other entries, batch["labels"])``.

    For mappings (dicts, Hugging Face ``BatchEncoding``) the targets are the first of
    ``labels``, ``label``, ``targets``, ``target``, ``y`` present; the model is called with
    the remaining entries as keyword arguments.
    """
    if isinstance(batch, Mapping):
        key = next((k for k in TARGET_KEYS if k in batch), None)
        require(
            key is not None,
            f"The batch is a mapping with keys {sorted(map(str, batch))} but no targets under "
            f"any of {TARGET_KEYS}; add the labels under 'labels', or pass "
            "Task(..., batch=fn) with fn(batch) -> (inputs, targets).",
            DataError,
        )
        return {k: v for k, v in batch.items() if k != key}, batch[key]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError(
        f"Cannot split a batch of type {type(batch).__name__} into inputs and targets; "
        "yield (x, y) pairs or dicts with 'labels', or pass Task(..., batch=fn) with "
        "fn(batch) -> (inputs, targets)."
    )


def default_output(output: Any) -> torch.Tensor:
    """The prediction tensor of a model output: a tensor, ``.logits``, ``["logits"]`` or the
    first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise DataError(
        f"The model returned a {type(output).__name__}; tdakit needs a tensor, an object with "
        ".logits, or a tuple whose first element is the prediction. Pass "
        "Task(..., output=fn) with fn(model_output) -> tensor."
    )


def call_model(model: nn.Module | Callable, inputs: Inputs) -> Any:
    """``model(**inputs)`` for a mapping, ``model(*inputs)`` for a tuple, else ``model(x)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def flatten(tree: Inputs) -> tuple[list[Any], Callable[[list[Any]], Inputs]]:
    """Leaves of a tensor pytree in a fixed order, and the function that rebuilds it."""
    if isinstance(tree, Mapping):
        keys = list(tree)
        parts = [flatten(tree[k]) for k in keys]
        kind = dict if isinstance(tree, dict) else (lambda items: dict(items))

        def rebuild_map(leaves: list[Any]) -> Inputs:
            out, i = [], 0
            for k, (sub, fn) in zip(keys, parts, strict=True):
                out.append((k, fn(leaves[i : i + len(sub)])))
                i += len(sub)
            return kind(out)

        return [leaf for sub, _ in parts for leaf in sub], rebuild_map
    if isinstance(tree, (tuple, list)):
        parts = [flatten(v) for v in tree]
        seq = type(tree) if type(tree) in (tuple, list) else tuple

        def rebuild_seq(leaves: list[Any]) -> Inputs:
            out, i = [], 0
            for sub, fn in parts:
                out.append(fn(leaves[i : i + len(sub)]))
                i += len(sub)
            return seq(out)

        return [leaf for sub, _ in parts for leaf in sub], rebuild_seq
    return [tree], lambda leaves: leaves[0]


def tree_map(fn: Callable[[torch.Tensor], Any], tree: Inputs) -> Inputs:
    """Apply ``fn`` to every tensor leaf; other leaves are kept."""
    leaves, rebuild = flatten(tree)
    return rebuild([fn(v) if isinstance(v, torch.Tensor) else v for v in leaves])


def tensors(tree: Inputs) -> list[torch.Tensor]:
    return [v for v in flatten(tree)[0] if isinstance(v, torch.Tensor)]


def batch_len(inputs: Inputs) -> int:
    """The batch size: the common first dimension of every tensor leaf."""
    sizes = {int(t.shape[0]) if t.ndim else -1 for t in tensors(inputs)}
    require(len(sizes) > 0, "The model inputs hold no tensor.", DataError)
    require(
        len(sizes) == 1 and -1 not in sizes,
        f"Every input tensor must have the batch as its first dimension; got first "
        f"dimensions {sorted(sizes)}. Put shared (unbatched) tensors into the model instead.",
        DataError,
    )
    return sizes.pop()


def select(tree: Inputs, index: slice | torch.Tensor | int) -> Inputs:
    """Rows ``index`` of every tensor leaf."""
    return tree_map(lambda t: t[index], tree)


def to_device(tree: Inputs, device: torch.device, dtype: torch.dtype | None = None) -> Inputs:
    """Move tensor leaves to ``device``; floating leaves also to ``dtype`` when given."""

    def move(t: torch.Tensor) -> torch.Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device)

    return tree_map(move, tree)


def digest(tree: Inputs, h: Any | None = None) -> Any:
    """Feed the shapes, dtypes and bytes of every tensor leaf (and other leaves' reprs)
    into a sha256 object (a new one when ``h`` is None) and return it."""
    h = hashlib.sha256() if h is None else h
    for leaf in flatten(tree)[0]:
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach().to("cpu").contiguous()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(leaf).encode())
    return h


def fingerprint(*trees: Inputs) -> str:
    """A short sha256 of the contents of tensors (or input pytrees)."""
    return digest(list(trees)).hexdigest()[:16]
