"""Named errors a user can cause.

Every error that bad input can trigger (a config value, a data file, a checkpoint) is one of
these, with a message that says what is wrong and what to change. The CLI prints such a message
on one line and exits with status 2; anything else is a bug and keeps its traceback.
"""


class JaxraeError(Exception):
    """Base class of every error a user can cause."""


class ConfigError(JaxraeError, ValueError):
    """A configuration value is invalid: the message names the field, the value and what is allowed."""


class DataError(JaxraeError, ValueError):
    """A data source is missing, corrupt or inconsistent: the message names the file and the fault."""


class CheckpointError(JaxraeError):
    """A checkpoint or results file is unreadable, partial, or belongs to another configuration."""
