"""Errors that reach the user as one clear message and a non-zero exit code."""


class PathasstError(Exception):
    """An error caused by the user's input or environment, not by a bug.

    The CLI prints ``str(error)`` without a traceback and exits with ``exit_code``.
    """

    exit_code = 1


class ConfigError(PathasstError):
    """A recipe or override is invalid (unknown key, wrong type, missing file)."""

    exit_code = 2


class InputError(PathasstError):
    """An input path is missing or unreadable."""

    exit_code = 2


class OutputError(PathasstError):
    """The output folder cannot be used: unwritable, locked, or holding a different run."""

    exit_code = 3


class RecordError(PathasstError):
    """A record does not satisfy its contract; the message names the record and the field."""

    exit_code = 4


class NotLandedError(PathasstError):
    """A verb or model family exists in the CLI but its implementation has not landed yet."""

    exit_code = 2
