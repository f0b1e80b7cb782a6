"""Errors that the command line reports as one clear line (no traceback)."""


class XlmkitError(Exception):
    """A user-facing error: bad input data, a missing file, an inconsistent run directory."""


class DataError(XlmkitError):
    """Bad input text or prepared data. The message names the file (and line where it applies)."""


class reading:
    """`with reading(path): ...` turns an OSError while reading `path` (EIO, permission denied, a
    directory where a file was expected) into a DataError naming the file: read errors from the OS
    often carry no file name."""

    def __init__(self, path) -> None:
        self.path = path

    def __enter__(self) -> "reading":
        return self

    def __exit__(self, tp, e, tb) -> bool:
        if e is not None and isinstance(e, OSError) and not isinstance(e, DataError):
            raise DataError(f"{self.path}: cannot read: {e.strerror or e}") from None
        return False


class Interrupted(Exception):
    """A run stopped by a signal (SIGTERM: a scheduler's preemption or `kill`; SIGINT: Ctrl-C) at the end
    of an optimizer step, after saving a resumable checkpoint. The command reports it in one line and
    exits with 128 + the signal number, as a process killed by it would."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
