"""Declarative benchmark suites: a TOML file each (dataset, controlled transform, model,
training recipe, methods by registry name, metrics), a runner that caches everything by
content and resumes, and result tables. ``tdakit.bench`` adds reports and the leaderboard."""

from tdakit.suites.config import Suite, builtin_names, load, parse
from tdakit.suites.runner import SuiteResult, run_suite

__all__ = ["Suite", "SuiteResult", "builtin_names", "load", "parse", "run_suite"]
