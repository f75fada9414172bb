"""Attribution methods behind one fit / scores / top_k / self_scores / iter_blocks contract,
each registered by name (``tda.methods.get_method``, ``from_config``)."""

from tdakit.methods.base import AttributionMethod
from tdakit.methods.feature_method import FeatureMethod
from tdakit.methods.gradient import GradCos, GradDot, TracIn
from tdakit.methods.influence import InfluenceFunction
from tdakit.methods.information import InformationGain, InformationLoss
from tdakit.methods.random import RandomBaseline
from tdakit.methods.registry import METHODS, from_config, get_method, register
from tdakit.methods.representation import RepresentationSimilarity
from tdakit.methods.representer import RepresenterPoints
from tdakit.methods.trak import TRAK

__all__ = [
    "METHODS",
    "TRAK",
    "AttributionMethod",
    "FeatureMethod",
    "GradCos",
    "GradDot",
    "InfluenceFunction",
    "InformationGain",
    "InformationLoss",
    "RandomBaseline",
    "RepresentationSimilarity",
    "RepresenterPoints",
    "TracIn",
    "from_config",
    "get_method",
    "register",
]
