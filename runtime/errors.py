"""The one exception type for problems the user can fix (bad input, missing weights, bad paths), and
how every command-line tool turns it into an exit code. SIGTERM (what `docker stop`, `timeout` and
schedulers send) unwinds the work as Ctrl-C does, so writers remove what they wrote."""

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

INTERRUPTED, TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM: what shells and schedulers expect


class RemoverError(Exception):
    """A user-facing problem: the CLI prints its message as one line and exits non-zero."""


class RemoverWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as "warning: ...")."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised where the main thread was, so everything unwinds as for Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise Terminated


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM raises `Terminated`, a KeyboardInterrupt:
    `with` blocks and `finally` clauses run, a ClipWriter removes its temporary output. The previous
    handler comes back afterwards. Elsewhere than the main thread, signals cannot be handled: no change."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(command: Callable[[], str | None]) -> int:
    """Run a command-line tool's work and return its exit code: 0 after printing the message the work
    returns (if any); a RemoverError is one `error:` line and 2; Ctrl-C is one line and 130, SIGTERM
    (unwound the same way, see `terminate_as_interrupt`) one line and 143."""
    try:
        with terminate_as_interrupt():
            message = command()
    except RemoverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated", file=sys.stderr)
        return TERMINATED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    if message:
        print(message)
    return 0
