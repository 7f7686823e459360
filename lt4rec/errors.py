"""Errors that end a command with a clear message instead of a traceback.

Raise these where bad input or configuration is found; `lt4rec.cli.main` prints the
message (which names the file, row or field at fault) and exits with status 1.
"""


class UserFacingError(Exception):
    """An error whose message is meant for the user of the command line."""


class DataError(UserFacingError):
    """Input data that cannot be used: a missing folder, a corrupt file, a bad row or field."""


class DataAnomaliesError(DataError):
    """Statistics of the data that break the curated schema (TFDV anomalies)."""
