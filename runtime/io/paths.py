"""Whether an output path would touch an input, whatever its spelling: files are compared by identity
(device and inode, so symlinks, `..` and hard links are seen through), and a folder input (frames, or
mask images) holds everything under it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from runtime.errors import RemoverError


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when both paths exist and name the same file or folder (same device and inode)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # missing, unreadable, or a name the OS refuses
        return False


def _with_parents(path: Path) -> list[Path]:
    """`path` and each folder above it, as spelled: `..` is not collapsed here (after a symlink it is
    not the lexical parent), each step is compared by identity."""
    path = path if path.is_absolute() else Path.cwd() / path
    return [path, *path.parents]


def _overlap(out: Path, source: Path) -> str | None:
    """How writing `out` would change `source` (a few words), or None when it would not."""
    if same_file(out, source):
        return "is"
    if os.path.isdir(source) and any(same_file(step, source) for step in _with_parents(out)[1:]):
        return "is inside"
    if os.path.isdir(out) and any(same_file(step, out) for step in _with_parents(source)[1:]):
        return "holds"
    return None


def overlaps(out: str | Path, source: str | Path) -> bool:
    """True when writing `out` could change `source`: the same file, `out` inside a folder `source`
    (a frames or mask-images folder), or `out` an existing folder holding `source`."""
    return _overlap(Path(out), Path(source)) is not None


def check_not_input(out: str | Path, inputs: Iterable[str | Path]) -> None:
    """A RemoverError when writing `out` would replace or change one of `inputs` (see `overlaps`)."""
    for source in inputs:
        how = _overlap(Path(out), Path(source))
        if how is not None:
            raise RemoverError(f"the output {out} {how} the input {source}: choose another output")
