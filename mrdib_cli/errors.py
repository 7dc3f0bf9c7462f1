"""Error types that the CLI turns into one-line messages and documented exit codes.

Library code raises these for problems a *user* can fix (bad input, missing files, offline models);
anything else is a bug and keeps its traceback (shown with ``--verbose``).

Exit codes (documented in the README and ``mrdib --help``):
    0 ok, 1 runtime failure, 2 usage error, 3 missing input or model/data unavailable offline,
    4 protocol mismatch refused (``compare`` without ``--force``).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_MISSING = 3
EXIT_PROTOCOL = 4


class MrdibError(Exception):
    """A user-facing error: ``str(err)`` is the one line shown to the user."""

    exit_code: int = EXIT_RUNTIME

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(MrdibError):
    """Bad option values or combinations, unknown names, invalid config keys."""

    exit_code = EXIT_USAGE


class MissingInputError(MrdibError):
    """An input file, dataset, feature table, run or model weight is missing or unreachable."""

    exit_code = EXIT_MISSING


class DataError(MrdibError):
    """Input data exists but is malformed (corrupt gzip, NaN features, id mismatch...)."""

    exit_code = EXIT_RUNTIME


class ProtocolMismatchError(MrdibError):
    """Runs with different evaluation protocols were asked to be compared."""

    exit_code = EXIT_PROTOCOL


class LockedError(MrdibError):
    """Another process holds the lock on the artefact this step would write."""

    exit_code = EXIT_RUNTIME
