"""Training: recipes (how to train a model on a subset with given seeds), the one training
loop, user training functions, and ``train_model`` for a given module."""

from tdakit.training.loop import TrainRun, epoch_batches, train_loop
from tdakit.training.recipe import FunctionRecipe, TrainingRecipe, as_recipe
from tdakit.training.train import TrainResult, train_model

__all__ = [
    "FunctionRecipe",
    "TrainResult",
    "TrainRun",
    "TrainingRecipe",
    "as_recipe",
    "epoch_batches",
    "train_loop",
    "train_model",
]
