"""What became of each clip of a batch, and the summary the batch prints (a table) and writes (JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.batch.manifest import REQUIRED, Clip
from runtime.io.outputs import write_atomically


@dataclass
class Outcome:
    """What became of a clip: `status` is done, skipped or failed."""

    clip: Clip
    status: str
    attempts: int = 0
    seconds: float = 0.0
    frames: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The summary's row for this clip (JSON types)."""
        fps = round(self.frames / self.seconds, 3) if self.frames and self.seconds else None
        paths = {name: str(getattr(self.clip, name)) for name in REQUIRED}
        numbers = {"attempts": self.attempts, "seconds": round(self.seconds, 3), "frames": self.frames, "fps": fps}
        return {"line": self.clip.line, **paths, "status": self.status, **numbers, "error": self.error}


@dataclass
class Summary:
    """Every clip's outcome in manifest order, and the batch's wall time."""

    outcomes: list[Outcome]
    seconds: float

    @property
    def failed(self) -> list[Outcome]:
        """The clips that failed (the batch's exit status is 1 when there are any)."""
        return [o for o in self.outcomes if o.status == "failed"]

    def totals(self) -> dict[str, Any]:
        """Clips by status, frames written, wall seconds and frames per wall second."""
        frames = sum(o.frames or 0 for o in self.outcomes if o.status == "done")
        counts = {status: sum(o.status == status for o in self.outcomes) for status in ("done", "skipped", "failed")}
        fps = round(frames / self.seconds, 3) if self.seconds else 0.0
        return {"clips": len(self.outcomes), **counts, "frames": frames, "seconds": round(self.seconds, 3), "fps": fps}

    def as_dict(self) -> dict[str, Any]:
        """What --json writes: {"clips": [each clip's row], "totals": totals()}."""
        return {"clips": [o.as_dict() for o in self.outcomes], "totals": self.totals()}

    def table(self) -> str:
        """One row per clip (the error last, unaligned) and a totals line."""
        rows = [["line", "status", "attempts", "seconds", "frames", "frames/s", "video", "error"]]
        for o in self.outcomes:
            row = o.as_dict()
            cells = [row[key] for key in ("line", "status", "attempts", "seconds", "frames", "fps")]
            rows.append(["-" if c is None else str(c) for c in cells] + [o.clip.video.name, o.error or ""])
        widths = [max(len(row[i]) for row in rows) for i in range(7)]
        lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[7]]).rstrip() for row in rows]
        t = self.totals()
        counts = f"{t['clips']} clip(s), {t['done']} done, {t['skipped']} skipped, {t['failed']} failed"
        return "\n".join(
            [*lines, f"total: {counts}; {t['frames']} frames in {t['seconds']:.1f} s ({t['fps']} frames/s)"]
        )

    def write_json(self, path: str | Path) -> None:
        """The summary as JSON, written under a temporary name and renamed."""
        text = json.dumps(self.as_dict(), indent=2) + "\n"
        write_atomically(Path(path), lambda to: to.write_text(text))


def is_summary(path: str | Path) -> bool:
    """Whether `path` is a summary a batch wrote (a JSON object of exactly "clips" and "totals"): a rerun
    that resumes a batch replaces its own report, and refuses any other existing file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and set(data) == {"clips", "totals"}
