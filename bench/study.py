"""What the studies (bench.run, footage, seams, scaling, the training step) share: where results go, progress
lines, the JSON they save, and Markdown tables."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def log(line: str) -> None:
    """A progress line on stderr (stdout carries the tables)."""
    print(line, file=sys.stderr, flush=True)


def save_json(path: Path, data: Any, indent: int = 1) -> Path:
    """Write `data` as JSON under a temporary name in the same folder, then rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(json.dumps(data, indent=indent) + "\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines."""
    line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    return [line(header), "|---" * len(header) + "|", *(line(row) for row in rows)]
