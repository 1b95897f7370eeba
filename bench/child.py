"""A command in a fresh process, with its peak resident set: `run_child(argv) -> ChildResult`.

The peak is the kernel's maximum resident set (ru_maxrss) of the command, or of the largest process of
its tree (torchrun's ranks), read with os.wait4 by a small launcher that forks the command. Not the
parent's own getrusage: a child spawned straight from a large process (as a test session is) inherits
that process's high-water mark through fork or vfork and exec, so its ru_maxrss could never fall below
the parent's; the launcher is a bare interpreter (about 10 MB), so its floor is far below anything
measured here. The command runs in its own session: a timeout or Ctrl-C ends the whole tree and leaves
nothing running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# argv: FD COMMAND...; forks COMMAND, waits for it, writes "<maxrss KiB> <status> <cpu s>" to FD
LAUNCHER = """
import os, sys
fd, command = int(sys.argv[1]), sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.close(fd)
    try:
        os.execvp(command[0], command)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
os.write(fd, f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)} {usage.ru_utime + usage.ru_stime}".encode())
"""


@dataclass(frozen=True)
class ChildResult:
    """How a command ended: exit status (negative: the signal that ended it), output, peak resident set
    (of the largest process of its tree), wall seconds and CPU seconds (user + system, the whole tree's)."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss_bytes: int
    seconds: float
    cpu_seconds: float

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / 2**20

    def last_line(self) -> str:
        """The last line of stderr (where the CLIs say what went wrong), for an error message."""
        return (self.stderr.strip().splitlines() or ["no output"])[-1]


def run_child(
    argv: Sequence[object], env: Mapping[str, str] | None = None, timeout: float | None = None, cwd: Path | None = None
) -> ChildResult:
    """Run `argv` (each item str()-ed) in a fresh process tree and wait for it; raises
    subprocess.TimeoutExpired after `timeout` seconds, with the tree ended."""
    read, write = os.pipe()
    command = [sys.executable, "-c", LAUNCHER, str(write), *map(str, argv)]
    start = time.perf_counter()
    try:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=None if env is None else dict(env),
            cwd=cwd, pass_fds=(write,), start_new_session=True,
        )  # fmt: skip
        os.close(write)
        write = -1
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException:  # a timeout or Ctrl-C: end the command's whole tree, not only the launcher
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
        seconds = time.perf_counter() - start
        report = os.read(read, 256).split()
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)
    if process.returncode != 0 or len(report) != 3:
        raise RuntimeError(f"the launcher failed (exit status {process.returncode}): {stderr.strip()[-500:]}")
    peak_kib, returncode, cpu = report
    return ChildResult(int(returncode), stdout, stderr, int(peak_kib) * 1024, seconds, float(cpu))


def python_command(module: str, *arguments: object) -> list[str]:
    """`python -m MODULE ARGUMENTS` with this interpreter."""
    return [sys.executable, "-m", module, *map(str, arguments)]


def runtime_cli(*arguments: object, ranks: int | None = None) -> list[str]:
    """`python -m runtime.run ARGUMENTS --quiet`, under torchrun with `ranks` processes when given."""
    if ranks is None:
        return python_command("runtime.run", *arguments, "--quiet")
    torchrun = python_command("torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}")
    return [*torchrun, "-m", "runtime.run", *map(str, arguments), "--quiet"]
