"""The errors raised for missing, incomplete or malformed collections, and how they list docnos."""
from __future__ import annotations

from typing import Sequence

__all__ = ['DatasetFormatError', 'UnknownDocnoError', 'preview']


class DatasetFormatError(ValueError):
    """A collection is missing, incomplete or malformed (the message names the file and line)."""


class UnknownDocnoError(DatasetFormatError, LookupError):
    """A docno has no text in the collection.

    Attributes:
        docnos: The docnos that were not found (at most the first few are named in the message).
    """

    def __init__(self, message: str, docnos: Sequence[str] = ()):
        super().__init__(message)
        self.docnos = list(docnos)


def preview(items: Sequence[str], n: int = 5) -> str:
    """The first ``n`` of ``items`` quoted and comma-separated, then how many more there are (for messages)."""
    shown = ', '.join(repr(x) for x in items[:n])
    return shown + (f', ... ({len(items) - n} more)' if len(items) > n else '')
