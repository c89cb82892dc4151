"""User-facing errors: each carries one line that says what went wrong and what to do.

The CLI prints ``str(error)`` on one line and exits with :attr:`EmbodiedError.exit_code`;
nothing else in the stack catches these.
"""

from __future__ import annotations


class EmbodiedError(Exception):
    """Base class of errors caused by user input (ids, keywords, files, configs)."""

    exit_code: int = 2


class UnknownEnvError(EmbodiedError, KeyError):
    """An environment id that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ConfigError(EmbodiedError, ValueError):
    """A keyword or value that a constructor or command does not accept."""
