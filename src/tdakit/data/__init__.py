"""Datasets available offline (scikit-learn bundled sets, synthetic data, Fashion-MNIST)."""

from tdakit.data.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    DataSplit,
    load_digits,
    load_fashion_mnist,
    load_tabular,
    make_classification,
    make_regression,
    read_idx,
)

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
