"""A JSON file the user gives (box masks, prompts), read with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.errors import RemoverError


def read_json(path: Path, what: str) -> Any:
    """The document in `path`; unreadable or not JSON is a RemoverError naming `what` ("the box file")."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise RemoverError(f"cannot read {what} {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise RemoverError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
