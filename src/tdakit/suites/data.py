"""A suite's data: the dataset, its controlled transform (the planted ground truth), and
disjoint validation (hyperparameter choice) and test (reported) query sets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tdakit.data import datasets, transforms
from tdakit.errors import require
from tdakit.suites.config import Suite

IMAGE = ("digits", "fashion_mnist")


@dataclass
class SuiteData:
    """Training set after the transform; validation and test queries; what was planted."""

    X: torch.Tensor
    y: torch.Tensor
    Xv: torch.Tensor
    yv: torch.Tensor
    Xq: torch.Tensor
    yq: torch.Tensor
    loss: str
    num_outputs: int
    image_shape: tuple[int, ...] | None
    classes: list[str] | None
    flipped: torch.Tensor | None = None  # label_flip: which labels were flipped
    triggered: torch.Tensor | None = None  # backdoor/shortcut: stamped training examples
    train_group: torch.Tensor | None = None  # class_grouping/mixed: fine labels or sources
    query_group: torch.Tensor | None = None

    @property
    def queries(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.Xq, self.yq


def _subsample(X: torch.Tensor, y: torch.Tensor, n: int | None, seed: int):
    if n is None or n >= len(X):
        return X, y
    keep = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return X[keep], y[keep]


def synthetic_text(n: int, seq_len: int, vocab: int, classes: int, seed: int):
    """Token sequences (0 = padding) of random length; each class has two keyword tokens and
    a sequence's label is the class whose keywords it holds most often (ties: the lowest)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (n,), generator=g)
    ids = torch.randint(2 * classes + 1, vocab, (n, seq_len), generator=g)
    label = torch.randint(0, classes, (n,), generator=g)
    for i in range(n):  # plant 1-3 keywords of the label (data generation, once)
        k = int(torch.randint(1, 4, (1,), generator=g))
        pos = torch.randperm(int(lengths[i]), generator=g)[:k]
        ids[i, pos] = 1 + 2 * label[i] + torch.randint(0, 2, (k,), generator=g)
    ids = torch.where(torch.arange(seq_len)[None] < lengths[:, None], ids, torch.zeros_like(ids))
    counts = torch.stack([((ids == 1 + 2 * c) | (ids == 2 + 2 * c)).sum(1) for c in range(classes)])
    return ids, counts.argmax(0)


def _base(suite: Suite) -> datasets.DataSplit:
    d, seed = suite.data, suite.seed
    name = d["dataset"]
    if name == "digits":
        return datasets.load_digits(seed=seed)
    if name == "fashion_mnist":
        n = d.get("n_train", 1000)
        return datasets.load_fashion_mnist(n_train=n, n_test=max(200, n // 4), seed=seed)
    if name in ("breast_cancer", "wine"):
        return datasets.load_tabular(name, seed=seed)
    if name == "regression":
        n = d.get("n_train", 300)
        return datasets.make_regression(n_train=n, n_test=200, n_features=8, seed=seed)
    T, V = d.get("seq_len", 12), d.get("vocab", 40)
    n = d.get("n_train", 400)
    ids, y = synthetic_text(n + 200, T, V, 3, seed)
    return datasets.DataSplit(ids[:n], y[:n], ids[n:], y[n:], ["a", "b", "c"], None)


def build(suite: Suite) -> SuiteData:
    """The suite's data, deterministic in ``suite.seed``."""
    split = _base(suite)
    d, t, seed = suite.data, suite.transform, suite.seed
    X, y = _subsample(split.X_train, split.y_train, d.get("n_train"), seed)
    regression = y.is_floating_point()
    nv, nq = d.get("n_validation", 10), d.get("n_query", 30)
    require(
        nv + nq <= len(split.X_test),
        f"n_validation + n_query ({nv + nq}) exceed the {len(split.X_test)} test examples.",
    )
    order = torch.randperm(len(split.X_test), generator=torch.Generator().manual_seed(seed + 1))
    Xt, yt = split.X_test[order], split.y_test[order]
    out = SuiteData(
        X,
        y,
        Xt[:nv],
        yt[:nv],
        Xt[nv : nv + nq],
        yt[nv : nv + nq],
        "mse" if regression else "cross_entropy",
        1 if regression else split.num_classes,
        split.image_shape,
        None if regression else split.classes,
    )
    _transform(out, t, seed, split)
    return out


def _transform(out: SuiteData, t: dict, seed: int, split: datasets.DataSplit) -> None:
    kind, frac = t.get("kind", "plain"), t.get("fraction", 0.1)
    if kind == "plain":
        return
    require(out.loss == "cross_entropy", f"The {kind!r} transform needs a classification set.")
    C = out.num_outputs
    if kind == "label_flip":
        out.y, out.flipped = transforms.flip_labels(out.y, frac, C, seed)
    elif kind in ("backdoor", "shortcut"):
        require(out.image_shape is not None, f"The {kind!r} transform stamps images.")
        target, patch = t.get("target_class", 0), t.get("patch_size", 2)
        if kind == "backdoor":
            out.X, out.y, out.triggered = transforms.add_trigger(
                out.X, out.y, frac, target, seed, patch_size=patch
            )
        else:  # a spurious patch on part of the target class only; labels kept
            cls = (out.y == target).nonzero().squeeze(1)
            pick = cls[torch.randperm(len(cls), generator=torch.Generator().manual_seed(seed))]
            out.triggered = torch.zeros(len(out.y), dtype=torch.bool)
            out.triggered[pick[: max(1, int(frac * len(out.y)))]] = True
            stamped = transforms.apply_trigger(out.X, patch_size=patch)
            out.X = torch.where(out.triggered.view(-1, *[1] * (out.X.ndim - 1)), stamped, out.X)
        for name in ("Xv", "Xq"):  # queries: other classes, with the trigger
            X, yy = getattr(out, name), getattr(out, "y" + name[1:])
            setattr(out, name, transforms.apply_trigger(X, patch_size=patch)[yy != target])
            setattr(out, "y" + name[1:], yy[yy != target])
    elif kind == "class_grouping":
        groups = t.get("groups") or [list(range(c, min(c + 2, C))) for c in range(0, C, 2)]
        fine = out.y.clone()
        out.y, _ = transforms.group_classes(out.y, groups)
        out.train_group = fine
        out.query_group = out.yq.clone()
        out.yv, _ = transforms.group_classes(out.yv, groups)
        out.yq, _ = transforms.group_classes(out.yq, groups)
        out.num_outputs = len(groups)
    else:  # mixed: a noisy copy of the data as the second source
        noise = t.get("noise", 0.5)
        g = torch.Generator().manual_seed(seed + 7)
        noisy = out.X + noise * torch.randn(out.X.shape, generator=g, dtype=out.X.dtype)
        out.X, out.y, out.train_group = transforms.mix_datasets(
            out.X, out.y, noisy, out.y, frac, seed
        )
        half = len(out.Xq) // 2
        out.Xq = torch.cat(
            [
                out.Xq[:half],
                out.Xq[half:]
                + noise * torch.randn(out.Xq[half:].shape, generator=g, dtype=out.Xq.dtype),
            ]
        )
        out.query_group = torch.arange(len(out.Xq)) >= half
        out.train_group = out.train_group.long()
        out.query_group = out.query_group.long()
