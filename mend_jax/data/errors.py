"""Errors and warnings raised by the data layer."""

from __future__ import annotations

__all__ = ["DataError", "DataWarning"]


class DataError(ValueError):
    """A data file or data argument cannot be used (missing, wrong format, bad range).

    Subclasses ``ValueError`` so callers that already catch ``ValueError`` keep working;
    the message always names the file/id or argument at fault.
    """


class DataWarning(UserWarning):
    """Something in a data file was handled by a documented rule (e.g. records skipped)."""
