"""User-facing errors: each message says what was wrong, where, and how to fix it.

The CLI turns any `TunelabError` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""


class TunelabError(Exception):
    """Base class for errors a user can cause and fix."""

    exit_code = 2


class ConfigError(TunelabError):
    """A config file, key or value is wrong."""


class DataError(TunelabError):
    """A data file or record is wrong. The message names file:line and field."""


class ModelError(TunelabError):
    """A model cannot be found, loaded or is unsafe to load."""


class RunError(TunelabError):
    """A run folder is missing, incomplete or would overwrite user work."""


class RunStopped(TunelabError):
    """Training was asked to stop (SIGTERM) and saved a checkpoint to resume from."""

    exit_code = 143  # 128 + SIGTERM, as a shell reports a process the signal ended
