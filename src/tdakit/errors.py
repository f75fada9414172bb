"""The errors tdakit raises. Every one is a :class:`TdakitError` (a ``ValueError``) whose
message says what is wrong and how to fix it; the subclasses tell the kinds apart:

- :class:`ConfigError`: an unknown option, a bad value, options that do not go together;
- :class:`NotFittedError`: a method used before ``fit``;
- :class:`DataError`: empty, mismatched, non-finite or badly typed data;
- :class:`NumericalError`: a curvature that is not positive definite, a diverging solver,
  non-finite gradients or scores;
- :class:`StoreError`: a missing, incomplete, corrupt or foreign file on disk;
- :class:`JobError`: retraining (or other executor) jobs that failed.
"""

from __future__ import annotations


class TdakitError(ValueError):
    """Bad input, configuration or state; the message says what is wrong and how to fix it."""


class ConfigError(TdakitError):
    """An option is unknown, out of range, or does not apply to this method or solver."""


class NotFittedError(TdakitError):
    """A method (or preconditioner) was used before ``fit``."""


class DataError(TdakitError):
    """The data are empty, mismatched, non-finite or of the wrong type."""


class NumericalError(TdakitError):
    """A numerical failure: an indefinite curvature, a diverging solver, NaN/inf values."""


class StoreError(TdakitError):
    """A file tdakit reads is missing, incomplete, corrupt or was written by something else."""


class JobError(TdakitError):
    """Executor jobs failed; ``.failures`` lists them and ``.results`` holds the rest."""


def require(condition: bool, message: str, error: type[TdakitError] = ConfigError) -> None:
    """Raise ``error(message)`` (a :class:`ConfigError` by default) unless ``condition``."""
    if not condition:
        raise error(message)


def require_data(condition: bool, message: str) -> None:
    """Raise :class:`DataError` unless ``condition``."""
    if not condition:
        raise DataError(message)
