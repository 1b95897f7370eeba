"""What the studies (bench.run and report, footage, scaling, gpu_check) share: where results go, progress
lines, files written under a temporary name (JSON, a section of RESULTS.md), and Markdown tables."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.io.outputs import write_atomically

RESULTS_DIR = Path(__file__).parent / "results"


def log(line: str) -> None:
    """A progress line on stderr (stdout carries the tables)."""
    print(line, file=sys.stderr, flush=True)


def save_text(path: Path, text: str) -> Path:
    """Write `text` under a temporary name in the same folder, then rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda to: to.write_text(text))
    return path


def save_json(path: Path, data: Any, indent: int = 1) -> Path:
    return save_text(path, json.dumps(data, indent=indent) + "\n")


def write_section(path: Path, begin: str, end: str, body: str, first: bool = False) -> Path:
    """Replace the section of the Markdown file `path` from the line `begin` to the line `end` with `body`
    between them, leaving the rest as it is; a section not there yet goes at the top (`first`) or the end."""
    section = f"{begin}\n{body}\n{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = section + "\n" + text if first else text.rstrip() + "\n\n" + section + "\n"
    return save_text(path, text if text.endswith("\n") else text + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines."""
    line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    return [line(header), "|---" * len(header) + "|", *(line(row) for row in rows)]
