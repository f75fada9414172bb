"""Attribution methods behind one fit / scores / top_k / self_scores contract."""

from tdakit.methods.base import AttributionMethod, FeatureMethod
from tdakit.methods.gradient import GradCos, GradDot, TracIn
from tdakit.methods.influence import InfluenceFunction
from tdakit.methods.random import RandomBaseline
from tdakit.methods.representation import RepresentationSimilarity
from tdakit.methods.representer import RepresenterPoints
from tdakit.methods.trak import TRAK

__all__ = [
    "TRAK",
    "AttributionMethod",
    "FeatureMethod",
    "GradCos",
    "GradDot",
    "InfluenceFunction",
    "RandomBaseline",
    "RepresentationSimilarity",
    "RepresenterPoints",
    "TracIn",
]
