"""Exceptions users see.

Every error raised on bad user input is a :class:`DaliAbsError`: its message names the
file (and row) at fault, the value found, and the fix. The CLI prints the message without a
traceback and exits with status 2.

Data that is usable but suspicious gives a :class:`DaliAbsWarning` (``warnings.warn``); the CLI
prints each as one line ``dali-abs: warning: ...`` and ``data check`` writes them to its report.
"""


class DaliAbsError(Exception):
    """Base class of errors caused by user input (files, options, models)."""


class DatasetError(DaliAbsError, ValueError):
    """A dataset manifest or image that cannot be used as given."""


class LabelsError(DaliAbsError, ValueError):
    """A patch-label file that does not follow the format."""


class DaliAbsWarning(UserWarning):
    """Input that is used as given but looks wrong (the message says what and how to fix it)."""


class DatasetWarning(DaliAbsWarning):
    """A manifest that loads but looks wrong (e.g. class indices with no images)."""
