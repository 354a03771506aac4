"""Named errors a user can cause.

Every error that bad input can trigger (a config value, a data file, a checkpoint) is one of
these, with a message that says what is wrong and what to change. The CLI prints such a message
on one line and exits with status 2; anything else is a bug and keeps its traceback.

Every check a user can fail goes through :func:`require` (or ``raise invalid(...)``), so all
such messages read ``field=value is invalid: what is allowed``.
"""

from __future__ import annotations

from typing import Any


class JaxraeError(Exception):
    """Base class of every error a user can cause."""


class ConfigError(JaxraeError, ValueError):
    """A configuration value is invalid: the message names the field, the value and what is allowed."""


class DataError(JaxraeError, ValueError):
    """A data source is missing, corrupt or inconsistent: the message names the file and the fault."""


class CheckpointError(JaxraeError):
    """A checkpoint or results file is unreadable, partial, or belongs to another configuration."""


def invalid(field: str, value: Any, allowed: str, error: type[JaxraeError] = ConfigError) -> JaxraeError:
    """The one message form of a bad value: ``"{field}={value!r} is invalid: {allowed}"``.

    ``allowed`` says what to change ("must be an integer >= 1", "choose one of a, b, c").
    ``error`` is :class:`ConfigError` for settings and :class:`DataError` for data; use it as
    ``raise invalid("steps", steps, "must be an integer >= 1")``.
    """
    return error(f"{field}={value!r} is invalid: {allowed}")


def require(condition: bool, field: str, value: Any, allowed: str, error: type[JaxraeError] = ConfigError) -> None:
    """Raise :func:`invalid` (field, value, allowed) unless ``condition`` holds."""
    if not condition:
        raise invalid(field, value, allowed, error)
