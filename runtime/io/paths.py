"""Whether an output path would touch an input, whatever its spelling: files are compared by identity
(device and inode, so symlinks, `..` and hard links are seen through), and a folder input (frames, or
mask images) holds everything under it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from runtime.errors import RemoverError
from runtime.io.outputs import probe_writable


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when both paths exist and name the same file or folder (same device and inode)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # missing, unreadable, or a name the OS refuses
        return False


def _with_parents(path: Path) -> list[Path]:
    """`path` and each folder above it, after symlinks and `..` are resolved in order (`realpath`: after
    a symlink `..` is not the lexical parent, and `f/../x` is not inside `f`); each step is compared by
    identity."""
    path = Path(os.path.realpath(path))
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


def check_distinct(outputs: Iterable[str | Path], inputs: Iterable[str | Path]) -> None:
    """A RemoverError when one of a command's `outputs` would replace or change one of its `inputs`
    (`check_not_input`), or two of them name one file, whatever the spelling."""
    named, sources = [Path(out) for out in outputs], list(inputs)
    for number, out in enumerate(named):
        check_not_input(out, sources)
        for other in named[:number]:
            if same_file(out, other) or (out.name == other.name and same_file(out.parent, other.parent)):
                raise RemoverError(f"the outputs {other} and {out} are the same file: give each its own name")


def check_outputs(outputs: Iterable[str | Path | None], inputs: Iterable[str | Path], overwrite: bool) -> None:
    """The check every command makes before any work on the report files it will write (None: not asked
    for): `check_distinct`, then a RemoverError for one that is a folder, exists without `overwrite`, or
    whose folder is missing or read-only. (Clips and masks: `runtime.io.writer.check_output`.)"""
    named = [Path(out) for out in outputs if out is not None]
    check_distinct(named, inputs)
    for out in named:
        if out.is_dir():
            raise RemoverError(f"the output {out} is a folder")
        if out.exists() and not overwrite:
            raise RemoverError(f"{out} exists (use --overwrite to replace it)")
        if not out.parent.is_dir():
            raise RemoverError(f"the folder of {out} does not exist")
        try:  # a file is made there and removed: os.access alone passes root on a folder it cannot write
            probe_writable(out, folder=False)
        except RemoverError:
            why = f"cannot write in {out.parent} (read-only or not yours): choose another output"
            raise RemoverError(why) from None
