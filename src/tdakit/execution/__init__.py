"""One executor for every independent job (retraining, featurisation shards): serial, local
processes or Ray, with a safe, content-keyed result cache that resumes after an interruption."""

from tdakit.execution.executor import BACKENDS, Executor, run_jobs
from tdakit.execution.job import Job, JobFailure, Shared, content_key, describe

__all__ = [
    "BACKENDS",
    "Executor",
    "Job",
    "JobFailure",
    "Shared",
    "content_key",
    "describe",
    "run_jobs",
]
