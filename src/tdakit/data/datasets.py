"""Small datasets available offline: scikit-learn's bundled sets, synthetic data, Fashion-MNIST.

Every loader returns a :class:`DataSplit` with float32 features and int64 labels
(classification) or float32 targets (regression). All random choices take a seed.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tdakit.errors import ConfigError, StoreError, require

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "DataSplit",
    "load_digits",
    "load_fashion_mnist",
    "load_tabular",
    "make_classification",
    "make_regression",
    "read_idx",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "TDAKIT_FASHION_MNIST"
TABULAR_DATASETS = ("breast_cancer", "wine")

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass
class DataSplit:
    """A train/test split. ``image_shape`` is ``(C, H, W)`` for images, ``None`` for tabular."""

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    classes: list[str]
    image_shape: tuple[int, ...] | None

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"DataSplit(train={tuple(self.X_train.shape)}, test={tuple(self.X_test.shape)}, "
            f"classes={len(self.classes)}, image_shape={self.image_shape})"
        )


# ---------------------------------------------------------------- validation


def _check_int(value: object, name: str, minimum: int = 1) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    require(ok and int(value) >= minimum, f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_test_size(test_size: float) -> float:
    require(
        isinstance(test_size, (int, float)) and 0.0 < float(test_size) < 1.0,
        f"test_size must be a fraction strictly between 0 and 1 (e.g. 0.25), got {test_size!r}.",
    )
    return float(test_size)


def _stratified_split(
    X: np.ndarray, y: np.ndarray, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    except ValueError as exc:  # too few examples per class for the requested split
        raise ConfigError(
            f"Cannot make a stratified split with test_size={test_size} of {len(y)} examples "
            f"({exc}). Choose a test_size that leaves at least one example of every class "
            "on both sides."
        ) from exc


def _to_split(
    Xtr: np.ndarray,
    ytr: np.ndarray,
    Xte: np.ndarray,
    yte: np.ndarray,
    classes: Sequence[str],
    image_shape: tuple[int, ...] | None,
    regression: bool = False,
) -> DataSplit:
    ydtype = torch.float32 if regression else torch.int64
    return DataSplit(
        X_train=torch.as_tensor(np.ascontiguousarray(Xtr), dtype=torch.float32),
        y_train=torch.as_tensor(np.ascontiguousarray(ytr), dtype=ydtype),
        X_test=torch.as_tensor(np.ascontiguousarray(Xte), dtype=torch.float32),
        y_test=torch.as_tensor(np.ascontiguousarray(yte), dtype=ydtype),
        classes=list(classes),
        image_shape=image_shape,
    )


# ---------------------------------------------------------------- scikit-learn bundled sets


def load_digits(test_size: float = 0.25, seed: int = 0) -> DataSplit:
    """scikit-learn's 8x8 digits: images ``[n, 1, 8, 8]`` in [0, 1], stratified seeded split."""
    from sklearn import datasets

    test_size = _check_test_size(test_size)
    seed = _check_int(seed, "seed", 0)
    d = datasets.load_digits()
    X = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    Xtr, Xte, ytr, yte = _stratified_split(X, d.target.astype(np.int64), test_size, seed)
    return _to_split(Xtr, ytr, Xte, yte, [str(c) for c in d.target_names], (1, 8, 8))


def load_tabular(name: str, test_size: float = 0.25, seed: int = 0) -> DataSplit:
    """scikit-learn's ``"breast_cancer"`` or ``"wine"``, standardised with training statistics."""
    from sklearn import datasets

    require(
        name in TABULAR_DATASETS,
        f"Unknown tabular dataset {name!r}; choose one of {', '.join(TABULAR_DATASETS)}.",
    )
    test_size = _check_test_size(test_size)
    seed = _check_int(seed, "seed", 0)
    d = datasets.load_breast_cancer() if name == "breast_cancer" else datasets.load_wine()
    X = d.data.astype(np.float64)
    Xtr, Xte, ytr, yte = _stratified_split(X, d.target.astype(np.int64), test_size, seed)
    mean, std = Xtr.mean(axis=0), Xtr.std(axis=0)
    std[std == 0] = 1.0
    Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std
    return _to_split(Xtr, ytr, Xte, yte, [str(c) for c in d.target_names], None)


# ---------------------------------------------------------------- synthetic


def make_classification(
    n_train: int = 200,
    n_test: int = 100,
    n_features: int = 10,
    n_classes: int = 3,
    seed: int = 0,
    separation: float = 3.0,
) -> DataSplit:
    """Gaussian blobs: class means at distance ``separation`` from the origin in random
    directions, standard-normal noise around them; classes balanced (round robin) in both splits.
    """
    n_train = _check_int(n_train, "n_train")
    n_test = _check_int(n_test, "n_test")
    n_features = _check_int(n_features, "n_features")
    n_classes = _check_int(n_classes, "n_classes", 2)
    seed = _check_int(seed, "seed", 0)
    require(
        np.isfinite(separation) and separation >= 0,
        f"separation must be a finite number >= 0, got {separation!r}.",
    )
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, n_features))
    means *= separation / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % n_classes)
        return means[y] + rng.standard_normal((n, n_features)), y

    Xtr, ytr = draw(n_train)
    Xte, yte = draw(n_test)
    return _to_split(Xtr, ytr, Xte, yte, [f"class_{c}" for c in range(n_classes)], None)


def make_regression(
    n_train: int = 200,
    n_test: int = 100,
    n_features: int = 10,
    noise: float = 0.1,
    seed: int = 0,
) -> DataSplit:
    """Linear targets ``y = X w + b + noise * eps`` with standard-normal ``X``; y is float32 [n].

    ``w ~ N(0, I / n_features)`` so the signal has unit variance; ``classes`` is empty.
    """
    n_train = _check_int(n_train, "n_train")
    n_test = _check_int(n_test, "n_test")
    n_features = _check_int(n_features, "n_features")
    seed = _check_int(seed, "seed", 0)
    require(
        np.isfinite(noise) and noise >= 0, f"noise must be a finite number >= 0, got {noise!r}."
    )
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n_features) / np.sqrt(n_features)
    b = rng.standard_normal()
    X = rng.standard_normal((n_train + n_test, n_features))
    y = X @ w + b + noise * rng.standard_normal(n_train + n_test)
    return _to_split(X[:n_train], y[:n_train], X[n_train:], y[n_train:], [], None, regression=True)


# ---------------------------------------------------------------- IDX / Fashion-MNIST


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or plain, detected from its content).

    Checks the magic number, type code, dimensions and exact file size; raises
    :class:`TdakitError` on a corrupt or truncated file.
    """
    path = Path(path)
    require(path.is_file(), f"IDX file '{path}' does not exist or is not a file.")

    def check(ok: bool, problem: str) -> None:
        require(
            ok,
            f"IDX file '{path}' {problem}. Re-download or reinstall it "
            "(e.g. `apt-get install --reinstall dataset-fashion-mnist`).",
        )

    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            check(False, f"is a corrupt or truncated gzip file ({exc})")
    check(len(raw) >= 4, f"is too short ({len(raw)} bytes) to hold a header")
    zero, code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    check(
        zero == 0 and code in _IDX_DTYPES and ndim >= 1,
        f"has a bad magic number 0x{raw[:4].hex()} (expected 0x0000, a type code in "
        f"{sorted(hex(c) for c in _IDX_DTYPES)} and a dimension count >= 1)",
    )
    header = 4 + 4 * ndim
    check(len(raw) >= header, "is truncated inside its header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    count = int(np.prod(dims, dtype=np.int64))
    expected = header + count * dtype.itemsize
    check(
        len(raw) == expected,
        f"has {len(raw)} bytes (decompressed) but its header (shape {dims}, dtype {dtype.str}) "
        f"implies {expected}: it is {'truncated' if len(raw) < expected else 'corrupt'}",
    )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header)
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, stem: str) -> Path | None:
    """Find ``stem`` (e.g. ``train-images-idx3-ubyte``), also as ``.gz`` or ``.idx3`` spelling."""
    alt = stem.replace("-idx", ".idx")
    for name in (stem, f"{stem}.gz", alt, f"{alt}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _subsample(labels: np.ndarray, n: int, seed: int, what: str) -> np.ndarray:
    """Seeded stratified subsample of ``n`` indices (class proportions kept, largest remainder)."""
    total = len(labels)
    require(
        n <= total,
        f"{what}={n} exceeds the {total} examples available; "
        f"pass {what} <= {total}, or None for all of them.",
    )
    if n == total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / total
    quota = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: n - quota.sum()]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def load_fashion_mnist(
    path: str | Path | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> DataSplit:
    """Fashion-MNIST from local IDX files: images ``[n, 1, 28, 28]`` float32 in [0, 1].

    The directory is ``path``, else ``$TDAKIT_FASHION_MNIST``, else
    ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
    ``n_train`` / ``n_test`` take a seeded *stratified* subsample (class proportions
    preserved, original order kept); ``None`` keeps every example. Nothing is downloaded.
    """
    seed = _check_int(seed, "seed", 0)
    if n_train is not None:
        n_train = _check_int(n_train, "n_train")
    if n_test is not None:
        n_test = _check_int(n_test, "n_test")
    if path is not None:
        directory, source = Path(path), "the path= argument"
    elif os.environ.get(FASHION_MNIST_ENV):
        directory, source = Path(os.environ[FASHION_MNIST_ENV]), f"${FASHION_MNIST_ENV}"
    else:
        directory, source = FASHION_MNIST_DIR, "the default location"
    stems = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }
    found = {k: _find_idx(directory, s) for k, s in stems.items()}
    missing = [stems[k] for k, p in found.items() if p is None]
    if missing:
        raise StoreError(
            f"Fashion-MNIST files not found in {str(directory)!r} (from {source}): missing "
            f"{', '.join(f'{m}[.gz]' for m in missing)}. Install them with "
            "`apt-get install dataset-fashion-mnist` (files go to "
            f"{FASHION_MNIST_DIR}), or point load_fashion_mnist(path=...) or the "
            f"{FASHION_MNIST_ENV} environment variable at a directory holding the four IDX files."
        )
    parts = []
    for split, n in (("train", n_train), ("test", n_test)):
        xp, yp = found[f"{split}_x"], found[f"{split}_y"]
        images, labels = read_idx(xp), read_idx(yp)
        require(
            images.ndim == 3 and images.dtype == np.uint8,
            f"{xp} should hold uint8 images [n, rows, cols], got {images.dtype} {images.shape}.",
        )
        require(
            labels.ndim == 1 and len(labels) == len(images),
            f"{yp} should hold {len(images)} labels (one per image in {xp.name}), "
            f"got shape {labels.shape}. The two files do not belong together.",
        )
        require(
            len(labels) > 0 and labels.min() >= 0 and labels.max() < len(FASHION_MNIST_CLASSES),
            f"{yp} holds labels outside 0..{len(FASHION_MNIST_CLASSES) - 1} (or none at all).",
        )
        what = f"n_{split}"
        idx = _subsample(labels, len(labels) if n is None else n, seed, what)
        x = torch.from_numpy(images[idx]).unsqueeze(1).to(torch.float32).div_(255.0)
        parts.append((x, torch.from_numpy(labels[idx].astype(np.int64))))
    (Xtr, ytr), (Xte, yte) = parts
    require(
        Xtr.shape[1:] == Xte.shape[1:],
        f"Train and test images differ in size ({tuple(Xtr.shape[2:])} vs {tuple(Xte.shape[2:])}).",
    )
    return DataSplit(Xtr, ytr, Xte, yte, list(FASHION_MNIST_CLASSES), tuple(Xtr.shape[1:]))
