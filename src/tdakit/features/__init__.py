"""Features: per-example gradients, random projections and the on-disk feature store."""

from tdakit.features.grads import flatten_blocks, gradient_features, per_example_grads
from tdakit.features.projection import Projector, make_projector

__all__ = [
    "Projector",
    "flatten_blocks",
    "gradient_features",
    "make_projector",
    "per_example_grads",
]
