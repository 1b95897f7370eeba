"""How an output gets into place without losing a file, also when runs race or die.

- Temporary names: a writer works under `.<stem>.partial-<pid><suffix>` beside the output; the pid
  says whose it is, so what a killed process left (`SIGKILL`, a power cut) is removed by the next run
  on that output (`remove_stale_partials`), and never what a live process is writing.
- Claims: `claim_output` creates `.<name>.lock` exclusively (O_CREAT | O_EXCL) holding the pid, so of
  two runs on one output one writes and the other gets a RemoverError at once; a lock whose process
  is dead is reclaimed. A claim is the process's: claiming again inside it is a no-op (`open_writer`
  claims its output, so the process that writes must be the one that claims).
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
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
    lock = _lock_name(path)
    owner = _lock_owner(lock)
    if owner is not None and not pid_alive(owner):
        _reclaim(lock, owner)
        cleaned.append(lock)
    return cleaned


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


def _lock_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _lock_owner(lock: Path) -> int | None:
    """The pid in a lock file; None when it is unreadable or not written yet."""
    try:
        text = lock.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _reclaim(lock: Path, dead: int) -> None:
    """Remove `lock` if it still holds the dead pid `dead`: renamed to a name of our own first, so of
    two runs reclaiming it at once only one removes it, and a fresh lock made meanwhile is put back."""
    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # another run reclaimed it
    if _lock_owner(aside) == dead:
        aside.unlink()
    elif not _link_no_replace(aside, lock):  # a live claim made between our read and our rename
        aside.unlink()


def claimed_by(path: str | Path) -> int | None:
    """The pid of the live process holding `path` (see `claim_output`), or None."""
    owner = _lock_owner(_lock_name(Path(path)))
    return owner if owner is not None and pid_alive(owner) else None


def release_dead_claim(path: str | Path, pid: int) -> None:
    """Remove the claim on `path` of process `pid`, known to be dead (a worker its parent saw die)."""
    lock = _lock_name(Path(path))
    if _lock_owner(lock) == pid:
        _reclaim(lock, pid)


@contextmanager
def claim_output(path: str | Path) -> Iterator[Path]:
    """Hold `path` for this process while the block runs: a RemoverError at once when a live process
    holds it (naming its pid and the lock file); a lock left by a dead process is reclaimed. The lock
    goes when the block ends, however it ends. Inside a claim of the same process: nothing more."""
    path = Path(path)
    lock = _lock_name(path)
    if _lock_owner(lock) == os.getpid():
        yield path
        return
    for _ in range(5):  # each retry follows a reclaimed stale lock
        try:
            descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and not pid_alive(owner):
                _reclaim(lock, owner)
                continue
            who = f"process {owner}" if owner is not None else "another process"
            raise RemoverError(
                f"{path} is being written by {who} (lock {lock}); remove the lock if no such run is active"
            ) from None
        except OSError as exc:
            raise RemoverError(f"cannot write {path}: {exc.strerror or exc}") from None
        break
    else:
        raise RemoverError(f"cannot claim {path}: its lock {lock} keeps coming back")
    try:
        os.write(descriptor, f"{os.getpid()}\n".encode())
    finally:
        os.close(descriptor)
    try:
        yield path
    finally:
        if _lock_owner(lock) == os.getpid():
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
