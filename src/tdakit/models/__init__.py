"""Small reference models (all expose ``head`` and ``features(x)``)."""

from tdakit.models.reference import MLP, MODELS, LeNet, LinearModel, ResNet9, build_model

__all__ = ["MLP", "MODELS", "LeNet", "LinearModel", "ResNet9", "build_model"]
