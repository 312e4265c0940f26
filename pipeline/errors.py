"""Errors that reach the user. Each message says what went wrong and what to do next."""

from __future__ import annotations


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
