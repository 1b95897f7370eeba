"""The one reader of the text files the user gives (manifests, box masks, prompts): CSV with a header
row, JSON and JSON lines, all with one-line errors naming the file and the line.

Encoding: UTF-8, with or without the byte-order mark spreadsheets write; UTF-16 with its byte-order
mark (Excel's "Unicode text") is decoded too. Anything else that does not decode, or NUL bytes (UTF-16
without a mark), is one RemoverError, never a traceback. A CSV's header may not repeat a column (the
second would silently win), and a row may not have more cells than the header.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.errors import RemoverError

UTF16_MARKS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def read_text(path: Path, what: str) -> str:
    """The text of `path` ("the manifest", "the box file", ...), decoded as above."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RemoverError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    encoding = "utf-16" if data.startswith(UTF16_MARKS) else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise RemoverError(f"{what} {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    if "\0" in text:
        raise RemoverError(f"{what} {path} holds NUL bytes (UTF-16 without its byte-order mark?): save it as UTF-8")
    return text


def read_json(path: Path, what: str) -> Any:
    """The document in `path`; unreadable or not JSON is a RemoverError naming `what` ("the box file")."""
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as exc:
        raise RemoverError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None


def read_json_lines(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file."""
    rows = []
    for line, text in enumerate(read_text(path, what).splitlines(), 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RemoverError(f"{path}, line {line}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise RemoverError(f"{path}, line {line}: expected an object, got {type(row).__name__}")
        rows.append((line, row))
    return rows


def read_csv(
    path: Path, what: str, name: Callable[[str], str] = str.strip
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header (each column through `name`) and (line number, column -> cell) for each row of a CSV
    file; a repeated column or a row with more cells than the header is a RemoverError."""
    reader = csv.reader(io.StringIO(read_text(path, what), newline=""))
    try:
        header = [name(column) for column in next(reader, [])]
        seen: set[str] = set()
        for column in header:
            if column in seen:
                raise RemoverError(f"{path}, line 1: the column {column!r} appears twice")
            seen.add(column)
        rows = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(header):
                raise RemoverError(f"{path}, line {reader.line_num}: more cells than the header's {len(header)}")
            rows.append((reader.line_num, dict(zip(header, cells))))
    except csv.Error as exc:
        raise RemoverError(f"{path}, line {reader.line_num}: not CSV ({exc})") from None
    return header, rows
