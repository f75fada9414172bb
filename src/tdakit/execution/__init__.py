"""One executor for every independent job (retraining, featurisation shards): serial, local
processes or Ray, with a content-keyed result cache that resumes after an interruption."""

from tdakit.execution.executor import (
    BACKENDS,
    Executor,
    Job,
    JobFailure,
    Shared,
    content_key,
    describe,
    run_jobs,
)

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
