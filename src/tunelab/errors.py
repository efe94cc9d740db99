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


def needs(module: str, extra: str):
    """`module` imported, or a ConfigError naming the optional extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"this needs {module}: pip install 'tunelab[{extra}]'") from None
