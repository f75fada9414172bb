"""Attribute a user's own saved model on their own data: what ``tdakit attribute`` runs.

The model is an importable factory (``package.module:function``) plus a weights file
(``.pt``/``.pth`` state dict, read with ``weights_only=True``, or ``.safetensors``), and for
TracIn and TRAK the checkpoints saved during training in the same formats; the data
are an importable factory returning a Dataset, a DataLoader or ``(X, y)``, or a file:
``.npz`` (arrays ``X`` and ``y``), ``.pt`` (a dict with ``X`` and ``y``), ``.csv`` (the last
column is the label) or a folder of images with one sub-folder per class. Floating inputs
are cast to the model's dtype. Outputs: ``proponents.csv``, ``opponents.csv``,
``results.json`` and ``report.html``.
"""

from __future__ import annotations

import copy
import csv
import importlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import tdakit as tda
from tdakit.errors import ConfigError, DataError, StoreError, require
from tdakit.storage.fileio import atomic_write, prepare_output_dir
from tdakit.task import load_weights

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def import_object(spec: str, what: str) -> Any:
    """``package.module:name`` -> the object, or a :class:`ConfigError` saying why not."""
    require(
        isinstance(spec, str) and spec.count(":") == 1 and all(spec.split(":")),
        f"The {what} must be given as package.module:name, got {spec!r}.",
    )
    module, name = spec.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise ConfigError(f"Cannot import the {what} module {module!r}: {err}.") from err
    except AttributeError as err:
        raise ConfigError(f"The module {module!r} has no {name!r} (the {what}).") from err


def load_model(factory: str, weights: str | Path | None) -> nn.Module:
    """Build the model from its factory and load the weights file (never unpickled)."""
    fn = import_object(factory, "model factory")
    require(callable(fn), f"The model factory {factory!r} is not callable.")
    model = fn()
    require(
        isinstance(model, nn.Module),
        f"The model factory {factory!r} returned {type(model).__name__}, not an nn.Module.",
    )
    if weights is not None:
        _load_into(model, read_state(weights), weights, factory)
    return model.eval()


def read_state(weights: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """The state dict in a ``.pt``/``.pth`` (``weights_only``) or ``.safetensors`` file."""
    path = Path(weights)
    require(path.is_file(), f"No {what} file {str(path)!r}.", StoreError)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise StoreError(
            f"Cannot read the {what} file {str(path)!r} ({type(err).__name__}): save the "
            "model's state_dict with torch.save or safetensors."
        ) from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    require(isinstance(state, dict), f"{str(path)!r} does not hold a state dict.", StoreError)
    return state


def _load_into(model: nn.Module, state: dict, path: str | Path, factory: str) -> None:
    load_weights(
        model,
        state,
        f"The weights in {str(path)!r} do not fit the model from {factory!r}",
        "Save model.state_dict() of the model that the factory builds.",
    )


def load_checkpoints(
    method: str, options: dict[str, Any], factory: str, net: nn.Module, paths: list[str] | None
) -> dict[str, Any]:
    """``checkpoints=`` for the methods that take an ensemble of saved weights (TracIn, TRAK).

    Each file is read like ``--weights`` and checked against the model's architecture.
    Without files, TRAK's ensemble is the given model alone.
    """
    needs = "checkpoints" in tda.methods.get_method(method).runtime_params
    for key in ("checkpoints", "recipe", "executor", "n_models"):
        require(
            not (needs and key in options),
            f"--option {key}=... is not available from the command line: pass the saved "
            "checkpoints with --checkpoint FILE (repeatable).",
        )
    if not paths:
        require(
            not needs or method == "trak",
            f"{method!r} needs the checkpoints saved during training: pass --checkpoint FILE "
            "once per checkpoint (and --option lrs=[...], the learning rate at each).",
        )
        return {"checkpoints": [net]} if needs else {}
    require(
        needs,
        f"--checkpoint applies to methods that take checkpoints (tracin, trak), not {method!r}.",
    )
    require(
        method != "tracin" or "lrs" in options,
        "tracin needs the learning rate at each checkpoint: --option 'lrs=[0.1, 0.1]' (one "
        "per --checkpoint) or --option lrs=0.1 (the same for all).",
    )
    states = []
    for path in paths:
        state = read_state(path, "checkpoint")
        _load_into(copy.deepcopy(net), state, path, factory)  # same architecture?
        states.append(state)
    return {"checkpoints": states}


def load_data(spec: str, what: str) -> Any:
    """A factory ``package.module:fn`` or a data file/folder -> something tdakit can read."""
    path = Path(spec)
    if not path.exists() and ":" in spec:
        fn = import_object(spec, f"{what} data factory")
        return fn() if callable(fn) else fn
    require(
        path.exists(),
        f"No {what} data at {spec!r} (a file, a folder, or module:function).",
        DataError,
    )
    if path.is_dir():
        return _image_folder(path, what)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                keys = list(f.keys())
                x = next((k for k in ("X", "x", "inputs") if k in keys), None)
                y = next((k for k in ("y", "Y", "labels", "targets") if k in keys), None)
                require(
                    x is not None and y is not None,
                    f"{spec}: the .npz needs arrays named X and y, got {keys}.",
                    DataError,
                )
                return torch.from_numpy(f[x]), torch.from_numpy(f[y])
        if suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                require(
                    "X" in obj and "y" in obj, f"{spec}: the .pt dict needs X and y.", DataError
                )
                return obj["X"], obj["y"]
            require(
                isinstance(obj, (tuple, list)) and len(obj) == 2,
                f"{spec}: a .pt data file holds {{'X': ..., 'y': ...}} or (X, y).",
                DataError,
            )
            return obj[0], obj[1]
        if suffix == ".csv":
            return _csv(path)
    except (OSError, ValueError, RuntimeError) as err:
        if isinstance(err, tda.TdakitError):
            raise
        raise DataError(f"Cannot read {what} data {spec!r}: {err}.") from err
    raise DataError(
        f"Unsupported {what} data {spec!r}: use .npz, .pt, .csv, an image folder or "
        "package.module:function."
    )


def _csv(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    text = path.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    try:
        float(rows[0][0])
    except (ValueError, IndexError):
        rows = rows[1:]  # a header
    table = np.array(rows, dtype=np.float64)
    require(
        table.ndim == 2 and table.shape[1] >= 2,
        f"{path}: need feature columns and a label.",
        DataError,
    )
    X, y = table[:, :-1], table[:, -1]
    labels = torch.from_numpy(y.astype(np.int64) if np.all(y == np.round(y)) else y)
    return torch.from_numpy(X), labels


def _image_folder(path: Path, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    from matplotlib.image import imread

    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    require(classes, f"{what} folder {path} needs one sub-folder per class.", DataError)
    xs, ys = [], []
    for c, name in enumerate(classes):
        for f in sorted((path / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                img = np.asarray(imread(f), dtype=np.float32)
                img = img / 255.0 if img.max() > 1 else img
                xs.append(img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0))
                ys.append(c)
    require(xs, f"No images ({', '.join(IMAGE_SUFFIXES)}) in {path}.", DataError)
    require(len({x.shape for x in xs}) == 1, f"The images in {path} differ in size.", DataError)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


def _cast(data: Any, model: nn.Module) -> Any:
    if isinstance(data, tuple) and isinstance(data[0], torch.Tensor):
        dtype = next(model.parameters()).dtype
        X = data[0].to(dtype) if data[0].is_floating_point() else data[0]
        return X, data[1]
    return data


def attribute(
    model: str,
    weights: str | None,
    train: str,
    queries: str,
    out: str | Path,
    *,
    method: str = "grad_dot",
    options: dict[str, Any] | None = None,
    loss: str = "cross_entropy",
    k: int = 10,
    reliability: int = 0,
    checkpoints: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Attribute ``queries`` to ``train`` with ``method``; write the files (module doc)."""
    require(str(out).strip() != "", "The output directory is an empty path.")
    out = Path(out)
    net = load_model(model, weights)
    train_data, query_data = (
        _cast(load_data(s, w), net) for s, w in ((train, "training"), (queries, "query"))
    )
    task = tda.Task(net, loss=loss)
    config = {"method": method, **(options or {}), "progress": progress}
    runtime = load_checkpoints(method, options or {}, model, net, checkpoints)
    attributor = tda.from_config(config, task, **runtime)
    created = prepare_output_dir(out)
    try:
        return _run(
            attributor,
            train_data,
            query_data,
            out,
            {
                "model": model,
                "weights": weights,
                "checkpoints": checkpoints,
                "train": train,
                "queries": queries,
            },
            k,
            reliability,
            progress,
        )
    except BaseException:
        if created:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise


def _run(
    attributor,
    train_data,
    query_data,
    out: Path,
    sources: dict[str, Any],
    k: int,
    reliability: int,
    progress: bool,
) -> dict[str, Any]:
    attributor.fit(train_data)
    idx, val = attributor.top_k(query_data, k)
    o_idx, o_val = attributor.top_k(query_data, k, opponents=True)
    dist = None
    if reliability:
        from tdakit.reliability import Laplace, score_distribution

        dist = score_distribution(
            attributor, Laplace(reliability), train_data, query_data, progress=progress
        )
    rows = {"proponents": (idx, val), "opponents": (o_idx, o_val)}
    for name, (I, V) in rows.items():
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            ["query", "rank", "train_index", "score"]
            + (["snr", "reliable"] if dist is not None else [])
        )
        for q in range(len(I)):
            for r in range(I.shape[1]):
                i = int(I[q, r])
                extra = (
                    [f"{float(dist.snr[q, i]):.4g}", bool(dist.reliable[q, i])]
                    if dist is not None
                    else []
                )
                w.writerow([q, r + 1, i, f"{float(V[q, r]):.6g}", *extra])
        text = buf.getvalue().encode()
        atomic_write(out / f"{name}.csv", lambda f, t=text: f.write(t))
    summary = {
        "method": attributor.to_config(),
        **sources,
        "k": k,
        "n_train": attributor.n_train,
        "proponents": idx.tolist(),
        "opponents": o_idx.tolist(),
        "fraction_reliable": None if dist is None else dist.fraction_reliable,
    }
    blob = json.dumps(summary, indent=1, default=str).encode()
    atomic_write(out / "results.json", lambda f: f.write(blob))
    _report(out, attributor, train_data, query_data, dist, k)
    return summary


def _report(out: Path, attributor, train_data, query_data, dist, k: int) -> None:
    from tdakit.data.sources import to_tensors
    from tdakit.report.html import Report

    report = Report("tdakit attribute", f"{attributor.to_config()['method']} on a user model")
    report.add_section("How to read this").add_text(
        "For every query, the proponents are the training examples whose score is highest: "
        "by this method's account they helped the model towards the query's label (removing "
        "them would raise the query's loss). The opponents have the lowest scores: they "
        "pushed the other way. Scores are comparable within a method, not across methods."
        + (
            " A badge says whether the score keeps its sign over posterior samples of the "
            "model (a Laplace approximation): reliable, or not, with its signal-to-noise "
            "ratio."
            if dist is not None
            else ""
        )
    )
    try:
        Xt, yt = to_tensors(train_data, "train")
        Xq, yq = to_tensors(query_data, "query")
    except tda.TdakitError:
        report.add_text("The data are not (x, y) tensors, so no example gallery is shown.")
    else:
        n = min(len(Xq), 12)
        S = attributor.scores((Xq[:n], yq[:n]))
        shape = tuple(Xt.shape[1:]) if Xt.ndim == 4 else None
        verdicts = {"scores": dist} if dist is not None else None
        report.add_explanations(
            (Xq[:n], yq[:n]),
            (Xt, yt),
            {"scores": S},
            k=min(k, 5),
            image_shape=shape,
            verdicts=verdicts,
        )
        if dist is not None:
            report.add_reliability({"scores": dist}, "Laplace approximation (EK-FAC GGN)")
    report.write(out / "report.html")
