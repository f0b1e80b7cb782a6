"""Errors that the command line reports as one clear line (no traceback)."""


class XlmkitError(Exception):
    """A user-facing error: bad input data, a missing file, an inconsistent run directory."""


class DataError(XlmkitError):
    """Bad input text or prepared data. The message names the file (and line where it applies)."""
