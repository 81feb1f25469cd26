"""User mistakes as one or two lines instead of a traceback.

A command raises ``UserError`` for what the user can fix (a wrong path, emulators not running, a
date outside the data); ``rillet``'s entry point (``pipelines.app.cli.main``) prints it as

    rillet <command>: <what is wrong>
      <what to do>

and exits with its code: 2 for a wrong argument (usage), 1 for a failure at run time. Anything
else is a bug and keeps its traceback; ``--debug`` shows the traceback of a UserError too.
"""

from __future__ import annotations

__all__ = ["RUNTIME", "USAGE", "UserError"]

USAGE = 2
RUNTIME = 1


class UserError(Exception):
    """A mistake the user can fix: ``message`` says what is wrong (and what was expected),
    ``fix`` the command or option that fixes it."""

    def __init__(self, message: str, fix: str = "", exit_code: int = USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.exit_code = exit_code
        self.command: str | None = None  # the command it is about, when the caller knows better

    def named(self, command: str) -> UserError:
        """This error, about ``command`` (``local up``; "" for rillet itself)."""
        self.command = command
        return self

    def lines(self, command: str) -> list[str]:
        head = f"rillet {command}: {self.message}" if command else f"rillet: {self.message}"
        return [head] + ([f"  {self.fix}"] if self.fix else [])
