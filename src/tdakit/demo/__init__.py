"""``tdakit demo``: train a small MLP on the 8x8 digits, explain a few test predictions with
every attribution method (each with its reliability verdicts), and write an HTML report."""

from tdakit.demo.entries import INFLUENCE_DAMPING, METHODS, DemoContext, MethodEntry
from tdakit.demo.run import DemoResult, MethodRun, pick_queries, run_demo

__all__ = [
    "INFLUENCE_DAMPING",
    "METHODS",
    "DemoContext",
    "DemoResult",
    "MethodEntry",
    "MethodRun",
    "pick_queries",
    "run_demo",
]
