"""The one exception type for problems the user can fix (bad input, missing weights, bad paths), and
how every command-line tool turns it into an exit code."""

import sys
from collections.abc import Callable


class RemoverError(Exception):
    """A user-facing problem: the CLI prints its message as one line and exits non-zero."""


class RemoverWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as "warning: ...")."""


def exit_code(command: Callable[[], str | None]) -> int:
    """Run a command-line tool's work and return its exit code: 0 after printing the message the work
    returns (if any); a RemoverError is one `error:` line and 2; Ctrl-C is one line and 130."""
    try:
        message = command()
    except RemoverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if message:
        print(message)
    return 0
