"""Features: per-example gradients (layer fast paths, vmap, a loop), tangent features,
representations, random projections, and where training features are kept."""

from tdakit.features.grads import batch_gradients, flatten_blocks, per_example_grads
from tdakit.features.projection import Projector, make_projector

__all__ = [
    "Projector",
    "batch_gradients",
    "flatten_blocks",
    "make_projector",
    "per_example_grads",
]
