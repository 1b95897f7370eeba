"""Seconds per stage, summed: what a run's summary line shows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Timings(dict[str, float]):
    """Stage name -> seconds, summed over every time the stage ran."""

    @contextmanager
    def stage(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        """Time the block as `name` (synchronizing a CUDA `device` first and last, so the time is the stage's own)."""
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        """Count `seconds` more for `name` (all of a stage's entries when `seconds` is another Timings')."""
        self[name] = self.get(name, 0.0) + seconds

    def merge(self, other: dict[str, float]) -> None:
        """Add every stage of `other`."""
        for name, seconds in other.items():
            self.add(name, seconds)
