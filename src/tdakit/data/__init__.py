"""Datasets available offline (scikit-learn bundled sets, synthetic data, Fashion-MNIST)
and seeded transforms for controlled evaluations (label flips, triggers, grouping, mixing)."""

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
from tdakit.data.transforms import (
    add_trigger,
    apply_trigger,
    flip_labels,
    group_classes,
    mix_datasets,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "DataSplit",
    "add_trigger",
    "apply_trigger",
    "flip_labels",
    "group_classes",
    "load_digits",
    "load_fashion_mnist",
    "load_tabular",
    "make_classification",
    "make_regression",
    "mix_datasets",
    "read_idx",
]
