"""tdakit: training data attribution for PyTorch.

>>> import tdakit as tda
>>> task = tda.Task(model, loss="cross_entropy")
>>> S = tda.GradDot(task).fit((X_train, y_train)).scores((X_query, y_query))
"""

from tdakit import groundtruth, metrics
from tdakit.errors import TdakitError
from tdakit.features.projection import Projector
from tdakit.methods import (
    TRAK,
    AttributionMethod,
    GradCos,
    GradDot,
    InfluenceFunction,
    RandomBaseline,
    RepresentationSimilarity,
    RepresenterPoints,
    TracIn,
)
from tdakit.task import Task

__version__ = "0.1.0"

__all__ = [
    "TRAK",
    "AttributionMethod",
    "GradCos",
    "GradDot",
    "InfluenceFunction",
    "Projector",
    "RandomBaseline",
    "RepresentationSimilarity",
    "RepresenterPoints",
    "Task",
    "TdakitError",
    "TracIn",
    "__version__",
    "groundtruth",
    "metrics",
]
