"""Errors that reach the user. Each message says what went wrong and what to do next."""

from __future__ import annotations

import os
import re


class FmpipeError(Exception):
    """Base class: a problem the user can fix. The CLI prints it and exits with `exit_code`."""

    exit_code = 2


class UsageError(FmpipeError):
    """A bad option value or combination."""


class InputError(FmpipeError):
    """An input (folder, model file, HDF5 file) that cannot be used."""


class ModelError(FmpipeError):
    """A model that cannot be built, loaded or tapped."""


class OutputExistsError(FmpipeError):
    """The output exists and `--overwrite` was not given."""


class FingerprintMismatch(FmpipeError):
    """A partial output was written with a different configuration."""


class IncompleteFileError(FmpipeError):
    """A file that is not (yet) complete was opened for a use that needs it complete."""


class RunFailure(FmpipeError):
    """A fault during a run (disk full, overflow, ...). The partial file stays resumable."""

    exit_code = 1
    exit_now = False  # HDF5 was left unable to close a file: the CLI exits at once after the message


def write_failed(path, err: Exception, then: str = "free space or fix the cause, then rerun.") -> RunFailure:
    """The one message for a write that failed (disk full, quota, I/O error): what, why, what next.
    `fmpipe: error: writing PATH failed: No space left on device. free space or fix the cause, then rerun.`"""
    # h5py's errors carry a page of HDF5 detail, and its errno (as an attribute, or only in the text).
    number = err.errno if isinstance(err, OSError) and err.errno else None
    found = re.search(r"errno = (\d+)", str(err))
    number = number or (int(found.group(1)) if found else None)
    reason = os.strerror(number) if number else str(err)
    return RunFailure(f"writing {path} failed: {reason}. {then[:1].upper()}{then[1:]}")


class Interrupted(RunFailure):
    """SIGINT/SIGTERM: the run stopped at a batch boundary; the partial file resumes."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class UnknownKeyError(InputError, KeyError):
    """No image with this key: an fmpipe error for the CLI, and a `KeyError` for `except KeyError`."""

    def __str__(self) -> str:  # KeyError's own str() would print the message in quotes
        return str(self.args[0]) if self.args else ""


class MissingFileError(InputError, FileNotFoundError):
    """A path that does not exist: an fmpipe error for the CLI, and a `FileNotFoundError` for Python."""


class ClosedStoreError(FmpipeError, ValueError):
    """A read from a store after `close()` (or after its `with` block), like a closed Python file."""

    exit_code = 1


class RowOutOfRange(UsageError, IndexError):
    """A row number outside the file: an fmpipe error for the CLI, and an `IndexError` for Python."""
