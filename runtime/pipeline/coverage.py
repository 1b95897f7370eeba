"""How much of a frame its mask covers: a mask covering (nearly) the whole frame is most often a mask read
wrongly (inverted, or white where alpha was meant), so a run's plan and a `Remover` call both say so."""

from __future__ import annotations

import numpy as np

from runtime.pipeline.box import Box

NEARLY_FULL = 0.98  # a frame's mask covering this share of it or more is noted and warned of


def mask_box(mask: np.ndarray) -> Box | None:
    """The bounding box of a bool mask [H, W], or None if it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def covers_nearly_all(mask: np.ndarray, box: Box | None) -> bool:
    """Whether a frame's bool mask [H, W] (bounding box `box`, from `mask_box`) covers NEARLY_FULL of it
    or more (the box is tested first: a frame with a small box is decided without counting its pixels)."""
    return box is not None and box.height * box.width >= NEARLY_FULL * mask.size and mask.mean() >= NEARLY_FULL


def nearly_full_note(count: int, first: int, frame_count: int) -> str:
    """The one line said when `count` of `frame_count` frames, from frame `first`, are (nearly) all mask."""
    return (
        f"the mask covers {NEARLY_FULL:.0%} or more of {count} of {frame_count} frame(s) (from frame "
        f"{first}): they are regenerated whole (an inverted mask, or white where alpha was meant?)"
    )
