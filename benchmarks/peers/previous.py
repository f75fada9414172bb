"""tdakit's numbers with the previous engine (before the engine refactor, issue D), kept so
that the report can show them beside the new ones.

Taken from ``docs/benchmarks-peers.md`` as of commit 1e98cdc (measured 2026-11-22 with
``.venv-peers/bin/python benchmarks/peers/run.py`` plus re-runs of some methods; load
averages 0.0-2.2, best time and largest peak over the runs, rounded as published there:
seconds to 0.01 s, memory to 1 MiB).
"""

from __future__ import annotations

COMMIT = "1e98cdc"
DATE = "2026-11-22"

# (case, group key) -> (seconds, peak MiB) of tdakit's fit + scores
PREVIOUS: dict[tuple[str, str], tuple[float, float]] = {
    ("digits", "graddot"): (0.02, 23),
    ("digits", "graddot_proj"): (0.34, 51),
    ("digits", "graddot_w"): (0.01, 5),
    ("digits", "exact_last"): (0.76, 67),
    ("digits", "exact"): (11.53, 1017),
    ("digits", "cg"): (2.64, 223),
    ("digits", "lissa"): (6.79, 80),
    ("digits", "arnoldi"): (1.55, 45),
    ("digits", "datainf"): (0.04, 35),
    ("digits", "ekfac"): (0.07, 49),
    ("digits", "trak"): (0.13, 76),
    ("digits", "representer"): (0.18, 55),
    ("fmnist", "graddot"): (0.87, 999),
    ("fmnist", "graddot_proj"): (2.48, 600),
    ("fmnist", "graddot_w"): (0.05, 26),
    ("fmnist", "exact_last"): (0.61, 99),
    ("fmnist", "cg"): (27.06, 1342),
    ("fmnist", "lissa"): (25.61, 1157),
    ("fmnist", "arnoldi"): (18.82, 1117),
    ("fmnist", "datainf"): (2.71, 1931),
    ("fmnist", "ekfac"): (2.10, 1160),
    ("fmnist", "trak"): (2.25, 786),
    ("fmnist", "representer"): (0.39, 131),
}
