"""tdakit: training data attribution for PyTorch.

>>> import tdakit as tda
>>> task = tda.Task(model, loss="cross_entropy")
>>> S = tda.GradDot(task).fit((X_train, y_train)).scores((X_query, y_query))
"""

from tdakit import data, execution, groundtruth, methods, metrics, reliability, training
from tdakit import preconditioners as solvers
from tdakit.errors import (
    ConfigError,
    DataError,
    JobError,
    NotFittedError,
    NumericalError,
    StoreError,
    TdakitError,
)
from tdakit.execution import Executor
from tdakit.features.projection import Projector
from tdakit.methods import (
    TRAK,
    AttributionMethod,
    GradCos,
    GradDot,
    InfluenceFunction,
    InformationGain,
    InformationLoss,
    RandomBaseline,
    RepresentationSimilarity,
    RepresenterPoints,
    TracIn,
    from_config,
    get_method,
)
from tdakit.task import Task
from tdakit.training import TrainingRecipe, train_model

__version__ = "0.2.0"

__all__ = [
    "TRAK",
    "AttributionMethod",
    "ConfigError",
    "DataError",
    "Executor",
    "GradCos",
    "GradDot",
    "InfluenceFunction",
    "InformationGain",
    "InformationLoss",
    "JobError",
    "NotFittedError",
    "NumericalError",
    "Projector",
    "RandomBaseline",
    "RepresentationSimilarity",
    "RepresenterPoints",
    "StoreError",
    "Task",
    "TdakitError",
    "TracIn",
    "TrainingRecipe",
    "__version__",
    "data",
    "execution",
    "from_config",
    "get_method",
    "groundtruth",
    "methods",
    "metrics",
    "reliability",
    "solvers",
    "train_model",
    "training",
]
