"""Tests for tdakit.data: bundled/synthetic datasets and the offline Fashion-MNIST loader."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tdakit.data import (
    FASHION_MNIST_CLASSES,
    DataSplit,
    load_digits,
    load_fashion_mnist,
    load_tabular,
    make_classification,
    make_regression,
    read_idx,
)
from tdakit.errors import TdakitError


def _idx_bytes(arr: np.ndarray) -> bytes:
    codes = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}
    code = codes[arr.dtype.type]
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write(path: Path, arr: np.ndarray, gz: bool) -> None:
    data = _idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)


def _fake_fashion(directory: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0] = 255  # guarantees the maximum appears
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        _write(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)


def _check_split(s: DataSplit) -> None:
    assert s.X_train.dtype == torch.float32 and s.X_test.dtype == torch.float32
    assert len(s.X_train) == len(s.y_train) and len(s.X_test) == len(s.y_test)


def test_digits_shapes_range_and_determinism():
    s = load_digits(test_size=0.25, seed=0)
    _check_split(s)
    assert s.image_shape == (1, 8, 8)
    assert s.X_train.shape[1:] == (1, 8, 8) and len(s.X_train) + len(s.X_test) == 1797
    assert s.y_train.dtype == torch.int64 and s.classes == [str(i) for i in range(10)]
    assert s.X_train.min() >= 0.0 and s.X_train.max() <= 1.0
    # stratified: every class present in the test split in near-equal proportion
    assert torch.bincount(s.y_test, minlength=10).min() >= 40
    again = load_digits(test_size=0.25, seed=0)
    assert torch.equal(s.X_train, again.X_train) and torch.equal(s.y_test, again.y_test)
    assert not torch.equal(s.y_train, load_digits(seed=1).y_train)


@pytest.mark.parametrize(
    ("name", "n_features", "n_classes"), [("breast_cancer", 30, 2), ("wine", 13, 3)]
)
def test_tabular_standardised(name, n_features, n_classes):
    s = load_tabular(name, test_size=0.3, seed=0)
    _check_split(s)
    assert s.image_shape is None and len(s.classes) == n_classes
    assert s.X_train.shape[1] == n_features
    assert torch.allclose(s.X_train.mean(0), torch.zeros(n_features), atol=1e-4)
    assert torch.allclose(s.X_train.std(0, unbiased=False), torch.ones(n_features), atol=1e-3)


def test_bad_arguments():
    with pytest.raises(TdakitError, match="test_size"):
        load_digits(test_size=1.0)
    with pytest.raises(TdakitError, match="breast_cancer"):
        load_tabular("iris")
    with pytest.raises(TdakitError, match="n_train"):
        make_classification(n_train=0)
    with pytest.raises(TdakitError, match="n_classes"):
        make_classification(n_classes=1)
    with pytest.raises(TdakitError, match="noise"):
        make_regression(noise=-1.0)


def test_make_classification():
    s = make_classification(n_train=60, n_test=30, n_features=5, n_classes=3, seed=2)
    _check_split(s)
    assert s.X_train.shape == (60, 5) and s.X_test.shape == (30, 5)
    assert torch.bincount(s.y_train).tolist() == [20, 20, 20]
    assert s.classes == ["class_0", "class_1", "class_2"]
    same = make_classification(n_train=60, n_test=30, n_features=5, n_classes=3, seed=2)
    assert torch.equal(s.X_train, same.X_train)
    # well separated blobs: nearest class mean classifies the test set well
    far = make_classification(60, 30, 5, 3, seed=2, separation=10.0)
    means = torch.stack([far.X_train[far.y_train == c].mean(0) for c in range(3)])
    pred = torch.cdist(far.X_test, means).argmin(1)
    assert (pred == far.y_test).float().mean() > 0.9


def test_make_regression():
    s = make_regression(n_train=50, n_test=10, n_features=4, noise=0.0, seed=0)
    _check_split(s)
    assert s.y_train.shape == (50,) and s.y_train.dtype == torch.float32 and s.classes == []
    # noise-free targets are exactly linear in X
    A = torch.cat([s.X_train, torch.ones(50, 1)], 1).double()
    sol = torch.linalg.lstsq(A, s.y_train.double().unsqueeze(1)).solution
    assert torch.allclose(A @ sol, s.y_train.double().unsqueeze(1), atol=1e-5)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, gz):
    arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    _write(path, arr, gz)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and np.array_equal(out, arr)


def test_read_idx_corrupt(tmp_path):
    arr = np.zeros((5, 28, 28), dtype=np.uint8)
    data = _idx_bytes(arr)
    (tmp_path / "trunc").write_bytes(data[:-10])
    with pytest.raises(TdakitError, match="truncated"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "trunc.gz").write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(TdakitError, match="gzip"):
        read_idx(tmp_path / "trunc.gz")
    (tmp_path / "magic").write_bytes(b"\x12\x34" + data[2:])
    with pytest.raises(TdakitError, match="magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(data[:6])
    with pytest.raises(TdakitError, match="header"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_idx(tmp_path, gz):
    _fake_fashion(tmp_path, gz=gz)
    s = load_fashion_mnist(tmp_path)
    _check_split(s)
    assert s.X_train.shape == (40, 1, 28, 28) and s.X_test.shape == (20, 1, 28, 28)
    assert s.image_shape == (1, 28, 28) and s.classes == FASHION_MNIST_CLASSES
    assert s.X_train.min() >= 0 and s.X_train.max() == 1.0
    assert s.y_train.dtype == torch.int64 and s.y_train.tolist()[:3] == [0, 1, 2]
    raw = read_idx(tmp_path / f"train-images-idx3-ubyte{'.gz' if gz else ''}")
    assert torch.allclose(s.X_train[5, 0], torch.from_numpy(raw[5]).float() / 255)


def test_fashion_mnist_subsample_stratified(tmp_path):
    _fake_fashion(tmp_path, n_train=100, n_test=50)
    s = load_fashion_mnist(tmp_path, n_train=30, n_test=10, seed=1)
    assert len(s.y_train) == 30 and len(s.y_test) == 10
    assert torch.bincount(s.y_train, minlength=10).tolist() == [3] * 10
    assert torch.bincount(s.y_test, minlength=10).tolist() == [1] * 10
    again = load_fashion_mnist(tmp_path, n_train=30, n_test=10, seed=1)
    assert torch.equal(s.X_train, again.X_train)
    other = load_fashion_mnist(tmp_path, n_train=30, n_test=10, seed=2)
    assert not torch.equal(s.X_train, other.X_train)
    with pytest.raises(TdakitError, match="n_train=101 exceeds"):
        load_fashion_mnist(tmp_path, n_train=101)
    with pytest.raises(TdakitError, match="n_test"):
        load_fashion_mnist(tmp_path, n_test=0)


def test_fashion_mnist_env_var(tmp_path, monkeypatch):
    _fake_fashion(tmp_path)
    monkeypatch.setenv("TDAKIT_FASHION_MNIST", str(tmp_path))
    assert load_fashion_mnist().X_train.shape[0] == 40


def test_fashion_mnist_missing_files(tmp_path, monkeypatch):
    monkeypatch.delenv("TDAKIT_FASHION_MNIST", raising=False)
    with pytest.raises(TdakitError) as info:
        load_fashion_mnist(tmp_path / "nowhere")
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert str(tmp_path / "nowhere") in msg
    assert "path=" in msg and "TDAKIT_FASHION_MNIST" in msg
    assert "train-images-idx3-ubyte" in msg


def test_fashion_mnist_truncated_file(tmp_path):
    _fake_fashion(tmp_path, gz=False)
    f = tmp_path / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(TdakitError, match="truncated"):
        load_fashion_mnist(tmp_path)


def test_fashion_mnist_mismatched_labels(tmp_path):
    _fake_fashion(tmp_path, gz=False)
    _write(tmp_path / "train-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8), gz=False)
    with pytest.raises(TdakitError, match="labels"):
        load_fashion_mnist(tmp_path)
