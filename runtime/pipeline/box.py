"""A pixel rectangle: where a window's crop sits in the frame, and a mask's bounding box."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """A half-open pixel rectangle [top, bottom) x [left, right)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def union(self, other: Box | None) -> Box:
        if other is None:
            return self
        return Box(
            min(self.top, other.top),
            min(self.left, other.left),
            max(self.bottom, other.bottom),
            max(self.right, other.right),
        )

    def grown(self, pixels: float) -> Box:
        """This box with `pixels` more on every side (not clamped)."""
        grow = math.ceil(pixels)
        return Box(self.top - grow, self.left - grow, self.bottom + grow, self.right + grow)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}+{self.left}+{self.top}"
