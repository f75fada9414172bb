"""The one exception type tdakit raises for bad input or state."""

from __future__ import annotations


class TdakitError(ValueError):
    """Bad input, configuration or cache; the message says what is wrong and how to fix it."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`TdakitError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise TdakitError(message)
