"""Self-contained HTML reports: tables, figures, explanations and method agreement."""

from tdakit.report.agreement import agreement_matrix
from tdakit.report.explain import Ranking
from tdakit.report.html import Report, escape, format_value

__all__ = ["Ranking", "Report", "agreement_matrix", "escape", "format_value"]
