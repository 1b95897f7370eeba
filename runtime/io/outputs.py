"""How an output gets into place without losing a file, also when runs race or die.

- Temporary names: a writer works under `.<stem>.partial-<pid><suffix>` beside the output; the pid
  says whose it is, so what a killed process left (`SIGKILL`, a power cut) is removed by the next run
  on that output (`remove_stale_partials`), and never what a live process is writing.
- Claims: `claim_output` puts `.<name>.lock` in place only once its owner is written in it (pid, host,
  the process's start time: the record is written under `.<name>.lock.new-<pid>` and linked onto the
  lock name, which fails when a lock exists), so of two runs on one output one writes and the other
  gets a RemoverError at once, and a full disk never leaves a lock without an owner. A lock whose owner
  is gone (no such process, or another one under a reused pid) or that names no owner (what an older
  version left) is reclaimed by the next run: nobody is ever told to remove a file. A claim is the
  process's: claiming again inside it is a no-op (`open_writer` claims its output, so the process that
  writes must be the one that claims).
- A file written whole at once (a report, a cache, a checkpoint) goes through `write_atomically`:
  written under its temporary name, renamed onto the target, the temporary removed on any failure.
- The final step, `publish`, renames the finished temporary onto the output and never replaces an
  output that appeared meanwhile unless overwriting was asked for: renameat2(RENAME_NOREPLACE), else
  a hard link (which fails on an existing name) and an unlink, else (a filesystem with neither) a
  check and a rename. Replacing a folder swaps it atomically (RENAME_EXCHANGE) where it can.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import RemoverError

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # renameat2 flags (linux/fs.h)
AT_FDCWD = -100
UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EXDEV}


def pid_alive(pid: int) -> bool:
    """True when a process `pid` exists (another user's included)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temporary_name(path: Path, purpose: str = "partial", pid: int | None = None) -> Path:
    """A hidden sibling of `path` (same suffix, so a muxer still picks its format from it), named for
    the process writing it."""
    return path.with_name(f".{path.stem}.{purpose}-{pid or os.getpid()}{path.suffix}")


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temporary)` on a `temporary_name` of `path`, then rename it onto `path`: a reader finds the
    old file or the whole new one, never half of one. On any failure (Ctrl-C included) the temporary is
    removed and `path` is left as it was. For a file written whole at once; a streamed output goes
    through `claim_output` and `publish`."""
    temporary = temporary_name(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree; nothing there is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove what writers of `path` that are no longer alive left beside it (their temporary
    outputs, their claim); a folder they had moved aside to replace it goes back when `path` is
    missing. Returns what was removed or restored."""
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.(partial|replaced)-(\d+){re.escape(path.suffix)}")
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    cleaned = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or pid_alive(int(match[2])):
            continue
        if match[1] == "replaced" and not os.path.lexists(path):
            entry.rename(path)
        else:
            remove_path(entry)
        cleaned.append(entry)
    return cleaned + _reclaim_stale_lock(path)


@contextmanager
def scratch_folder(parent: str | Path | None, purpose: str) -> Iterator[Path]:
    """A hidden folder `.<purpose>-<pid>-<random>` in `parent` (default the system's temporary folder)
    for the block, removed when it ends however it ends. What processes now dead left there under the
    same purpose (killed with SIGKILL, a power cut) is removed first, as `remove_stale_partials` does
    for outputs."""
    parent = Path(parent if parent is not None else tempfile.gettempdir())
    remove_stale_scratch(parent, purpose)
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{purpose}-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise write_error(parent, exc) from None
    try:
        yield folder
    finally:
        remove_path(folder)


def remove_stale_scratch(parent: Path, purpose: str) -> list[Path]:
    """Remove the `scratch_folder`s of `purpose` in `parent` whose processes are no longer alive."""
    pattern = re.compile(rf"\.{re.escape(purpose)}-(\d+)-\w+")
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    stale = [entry for entry in entries if (match := pattern.fullmatch(entry.name)) and not pid_alive(int(match[1]))]
    for entry in stale:
        remove_path(entry)
    return stale


def probe_writable(path: Path, folder: bool) -> None:
    """Create and remove this process's temporary name for `path` (a folder when `folder`): a
    RemoverError, before any work, when the output cannot be made there."""
    probe = temporary_name(path)
    try:
        if folder:
            probe.mkdir()
            probe.rmdir()
        else:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            probe.unlink()
    except OSError as exc:
        raise RemoverError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_error(target: Path, exc: OSError) -> RemoverError:
    """The one line for a write of `target` that failed: a full disk says so."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RemoverError(f"no space left on the device writing {target}; nothing was kept")
    return RemoverError(f"cannot write {target}: {exc.strerror or exc}; nothing was kept")


def _start_time(pid: int) -> str:
    """When process `pid` started (clock ticks after boot, /proc/<pid>/stat's 22nd field); "" where
    this system does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()  # the name, in parentheses, may hold spaces
    return fields[19] if len(fields) > 19 else ""


@dataclass(frozen=True)
class Owner:
    """Who holds a lock: a process on a host, with its start time (so a reused pid is not taken for
    it). pid 0: a lock with no owner recorded."""

    pid: int
    host: str = ""
    started: str = ""

    @classmethod
    def this_process(cls) -> Owner:
        return cls(os.getpid(), socket.gethostname(), _start_time(os.getpid()))

    @classmethod
    def parse(cls, text: str) -> Owner:
        fields = text.split()
        if not fields or not fields[0].isdigit():
            return cls(0)
        return cls(int(fields[0]), *fields[1:3])

    def record(self) -> str:
        return f"{self.pid} {self.host} {self.started}\n"

    def alive(self) -> bool:
        """False when the owner is surely gone; a process on another host is taken as alive."""
        if self.pid <= 0:
            return False
        if self.host and self.host != socket.gethostname():
            return True
        if not pid_alive(self.pid):
            return False
        started = _start_time(self.pid)
        return not (self.started and started and started != self.started)

    def describe(self) -> str:
        on = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        return f"process {self.pid}{on}"


def _lock_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _lock_owner(lock: Path) -> Owner | None:
    """Who a lock file names (pid 0 when it names nobody); None when there is no lock."""
    try:
        return Owner.parse(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return Owner(0)


def _reclaim(lock: Path, stale: Owner) -> None:
    """Remove `lock` if it still names the gone owner `stale`: renamed to a name of our own first, so
    of two runs reclaiming it at once only one removes it, and a fresh lock made meanwhile is put back."""
    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # another run reclaimed it
    if _lock_owner(aside) == stale:
        aside.unlink()
    elif not _link_no_replace(aside, lock):  # a live claim made between our read and our rename
        aside.unlink()


def _reclaim_stale_lock(path: Path) -> list[Path]:
    """Reclaim the lock on `path` when its owner is gone or unnamed, and remove what claims of `path`
    by processes now dead left beside it (an owner record not yet linked, a lock set aside)."""
    lock = _lock_name(path)
    cleaned = []
    leftovers = re.compile(rf"{re.escape(lock.name)}\.(new|stale)-(\d+)")
    with suppress(OSError):
        for entry in path.parent.iterdir():
            match = leftovers.fullmatch(entry.name)
            if match and not pid_alive(int(match[2])):
                remove_path(entry)
                cleaned.append(entry)
    owner = _lock_owner(lock)
    if owner is not None and not owner.alive():
        _reclaim(lock, owner)
        cleaned.append(lock)
    return cleaned


def claimed_by(path: str | Path) -> int | None:
    """The pid of the live process holding `path` (see `claim_output`), or None."""
    owner = _lock_owner(_lock_name(Path(path)))
    return owner.pid if owner is not None and owner.alive() else None


def release_dead_claim(path: str | Path, pid: int) -> None:
    """Remove the claim on `path` of process `pid`, known to be dead (a worker its parent saw die)."""
    lock = _lock_name(Path(path))
    owner = _lock_owner(lock)
    if owner is not None and owner.pid == pid:
        _reclaim(lock, owner)


def _holds(lock: Path) -> bool:
    return _lock_owner(lock) == Owner.this_process()


def _take_lock(path: Path, lock: Path) -> None:
    """Put this process's lock on `path` in place, its owner already written in it."""
    record = lock.with_name(f"{lock.name}.new-{os.getpid()}")
    try:
        try:
            descriptor = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(descriptor, Owner.this_process().record().encode())
            finally:
                os.close(descriptor)
            for _ in range(5):  # each retry follows a reclaimed stale lock
                if _link_no_replace(record, lock):
                    return
                owner = _lock_owner(lock)
                if owner is not None and owner.alive():
                    raise RemoverError(f"{path} is being written by {owner.describe()} (its lock is {lock})")
                if owner is not None:
                    _reclaim(lock, owner)
        except OSError as exc:
            raise write_error(path, exc) from None
        raise RemoverError(f"cannot claim {path}: its lock {lock} keeps coming back")
    finally:
        with suppress(OSError):
            record.unlink(missing_ok=True)


@contextmanager
def claim_output(path: str | Path) -> Iterator[Path]:
    """Hold `path` for this process while the block runs: a RemoverError at once when a live process
    holds it (naming its pid); a lock whose owner is gone, or that names none, is reclaimed. The lock
    goes when the block ends, however it ends. Inside a claim of the same process: nothing more."""
    path = Path(path)
    lock = _lock_name(path)
    if _holds(lock):
        yield path
        return
    _take_lock(path, lock)
    try:
        yield path
    finally:
        if _holds(lock):
            lock.unlink(missing_ok=True)


_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def _rename_flags(source: Path, target: Path, flags: int) -> bool:
    """renameat2 with `flags`; False when this system or filesystem lacks it. Other failures raise."""
    if _renameat2 is None:
        return False
    if _renameat2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(target))


def _link_no_replace(source: Path, target: Path) -> bool:
    """Move the file `source` to `target` unless `target` exists (then False, `source` stays)."""
    try:
        if _rename_flags(source, target, RENAME_NOREPLACE):
            return True
    except FileExistsError:
        return False
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in UNSUPPORTED:
            raise
        if os.path.lexists(target):  # no hard links here: a check and a rename, the best there is
            return False
        os.rename(source, target)
        return True
    source.unlink()
    return True


def publish(temporary: Path, target: Path, overwrite: bool) -> None:
    """Put the finished `temporary` (file or folder) in place of `target`. Without `overwrite`, an
    existing `target` (one another run finished meanwhile) is never replaced: a RemoverError, and
    `temporary` is left for the caller to remove. An empty folder `target` counts as absent."""
    if temporary.is_dir():
        _publish_folder(temporary, target, overwrite)
    elif overwrite:
        os.replace(temporary, target)
    elif not _link_no_replace(temporary, target):
        raise RemoverError(f"{target} appeared while this run wrote it (another run?); not replacing it")


def _publish_folder(temporary: Path, target: Path, overwrite: bool) -> None:
    if target.is_dir() and overwrite and _rename_flags(temporary, target, RENAME_EXCHANGE):
        remove_path(temporary)  # now the old folder
        return
    if target.is_dir() and overwrite:  # no atomic swap here: move the old one aside, then in
        aside = temporary_name(target, "replaced")
        target.rename(aside)
        temporary.rename(target)
        remove_path(aside)
        return
    try:
        if target.is_dir():
            target.rmdir()  # only an empty one: fails when frames appeared
        os.rename(temporary, target)  # a folder never replaces a non-empty one
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise RemoverError(f"{target} appeared while this run wrote it (another run?); not replacing it") from None
        raise
