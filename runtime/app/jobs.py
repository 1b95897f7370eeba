"""Device jobs: each runs as a child process of a command-line tool (`python -m runtime.run ...`), so its
frames are exactly the CLI's, its memory goes back when it ends, and Cancel is the CLI's Ctrl-C (SIGINT:
the writer removes its partial output). One job holds the device at a time; the others wait in a
first-in first-out `DeviceQueue` and know their place. Progress comes from the child's tqdm bars on
stderr (`parse_progress`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import runtime
from runtime.errors import RemoverError

PACKAGE_ROOT = Path(runtime.__file__).resolve().parents[1]  # the child imports the same runtime as the app
INTERRUPT_GRACE_S = 15.0  # after SIGINT, how long the child may take to clean up before it is killed
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BAR = re.compile(r"^\s*(?P<stage>[A-Za-z][\w ]*?):\s+\d+%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)(?P<rest>.*)$")
_WINDOW = re.compile(r"window (\d+)/(\d+)")


@dataclass(frozen=True)
class Progress:
    """One tqdm update of the child: `done` of `total` in `stage`, and the window when it says."""

    stage: str
    done: int
    total: int
    window: tuple[int, int] | None = None

    def describe(self) -> str:
        where = f" (window {self.window[0]}/{self.window[1]})" if self.window else ""
        return f"{self.stage} {self.done}/{self.total}{where}"


def parse_progress(line: str) -> Progress | None:
    """A tqdm line (`denoise:  50%|###  | 3/6 [00:01<00:01, ...]`) as Progress; None for other lines."""
    match = _BAR.match(_ANSI.sub("", line))
    if match is None:
        return None
    window = _WINDOW.search(match["rest"])
    return Progress(
        match["stage"].strip(),
        int(match["done"]),
        int(match["total"]),
        (int(window[1]), int(window[2])) if window else None,
    )


@dataclass
class Ticket:
    """A job's place in the device queue."""

    owner: str
    cancelled: bool = False


@dataclass
class DeviceQueue:
    """First in, first out: one ticket holds the device at a time."""

    waiting: list[Ticket] = field(default_factory=list)
    running: Ticket | None = None
    _changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def place(self, ticket: Ticket) -> int:
        """0 when `ticket` holds the device, else its 1-based place among the waiting."""
        if self.running is ticket:
            return 0
        return self.waiting.index(ticket) + 1 if ticket in self.waiting else -1

    async def wait_turn(self, ticket: Ticket, poll_s: float = 0.5) -> AsyncIterator[int]:
        """Queue `ticket` and yield its place (1, 2, ...) while it waits; returns once it holds the
        device. A ticket cancelled while waiting leaves the queue and ends the iteration without the device."""
        changed = self._condition()
        async with changed:
            self.waiting.append(ticket)
            changed.notify_all()
        try:
            while True:
                async with changed:
                    if ticket.cancelled:
                        return
                    if self.running is None and self.waiting[0] is ticket:
                        self.waiting.pop(0)
                        self.running = ticket
                        return
                    place = self.waiting.index(ticket) + 1
                yield place
                async with changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), poll_s)
        finally:
            async with changed:
                if ticket in self.waiting:
                    self.waiting.remove(ticket)
                    changed.notify_all()

    async def release(self, ticket: Ticket) -> None:
        changed = self._condition()
        async with changed:
            if self.running is ticket:
                self.running = None
            changed.notify_all()


@dataclass
class Outcome:
    """How a child ended: its exit code, the last `error:` line (if any), its other lines."""

    returncode: int
    error: str | None
    lines: list[str]
    cancelled: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.cancelled


class ChildJob:
    """`python -m MODULE ARGS` in `cwd`, its stderr read line by line (tqdm's carriage returns too)."""

    def __init__(self, module: str, args: Sequence[str], cwd: Path) -> None:
        self.argv = [sys.executable, "-m", module, *map(str, args)]
        self.cwd = cwd
        self.process: asyncio.subprocess.Process | None = None
        self.cancelled = False
        self.lines: list[str] = []
        self.error: str | None = None

    async def start(self) -> None:
        path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "0.2"}
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=self.cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C meant for the server does not reach the job
        )

    async def updates(self) -> AsyncIterator[Progress | str]:
        """Progress and the other lines of stderr until the child closes it."""
        assert self.process is not None and self.process.stderr is not None
        pending = b""
        while chunk := await self.process.stderr.read(4096):
            pending += chunk
            *parts, pending = re.split(rb"[\r\n]", pending)
            for part in parts:
                if update := self._line(part):
                    yield update
        if update := self._line(pending):
            yield update

    def _line(self, raw: bytes) -> Progress | str | None:
        line = _ANSI.sub("", raw.decode(errors="replace")).strip()
        if not line:
            return None
        progress = parse_progress(line)
        if progress is not None:
            return progress
        self.lines.append(line)
        if line.startswith("error:"):
            self.error = line.removeprefix("error:").strip()
        return line

    async def finish(self) -> Outcome:
        """Wait for the exit; the stdout lines join the others."""
        assert self.process is not None and self.process.stdout is not None
        out = await self.process.stdout.read()
        code = await self.process.wait()
        self.lines += [line for line in out.decode(errors="replace").splitlines() if line.strip()]
        return Outcome(code, self.error, self.lines, self.cancelled)

    def interrupt(self) -> None:
        """Ctrl-C for the child (it removes its partial output and exits 130); once: a second Ctrl-C
        would interrupt its clean-up."""
        if self.cancelled:
            return
        self.cancelled = True
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)

    async def stop(self) -> None:
        """Interrupt and wait; kill it if it has not ended after INTERRUPT_GRACE_S."""
        if self.process is None or self.process.returncode is not None:
            return
        self.interrupt()
        try:
            await asyncio.wait_for(self.process.wait(), INTERRUPT_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()


def let_jobs_take_ctrl_c() -> None:
    """Cancel is the job's Ctrl-C; a server started with SIGINT ignored (`python -m runtime.app &` in a script:
    the shell ignores Ctrl-C for background commands) would pass the ignoring on through exec, and a cancelled
    job would run to the end and write its output. The server keeps ignoring Ctrl-C, with a handler of its own
    that exec resets to the default in each job."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, lambda *_: None)


def check_finished(outcome: Outcome, what: str) -> None:
    """A RemoverError for a child that failed: its `error:` line, else its last line and exit code."""
    if outcome.cancelled or outcome.returncode == 0:
        return
    if outcome.error:
        raise RemoverError(outcome.error)
    last = outcome.lines[-1] if outcome.lines else "no output"
    raise RemoverError(f"{what} failed (exit {outcome.returncode}): {last}")
