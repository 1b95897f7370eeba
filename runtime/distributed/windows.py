"""Whole windows spread over the torchrun ranks (crossfaded windows are independent): the windows with a
mask go to the ranks in turn; each other rank reads the clip itself, computes its windows and sends
their finished frames to rank 0, which computes its own and writes every frame in order.

Host memory on another rank: one window of frames at a time (it keeps only its own windows' frames).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from runtime.clips.plan import Plan, Window
from runtime.clips.stream import LocalWindows, Slot, next_slot
from runtime.distributed.group import collective
from runtime.errors import RemoverError
from runtime.options import RunOptions
from runtime.pipeline.remover import Remover
from runtime.pipeline.timing import Timings


def window_owners(plan: Plan, ranks: int) -> list[int]:
    """The rank that computes each window: the windows with a mask in turn, those without on rank 0
    (they copy their input)."""
    owners, turn = [], 0
    for window in plan.windows:
        owners.append(0 if window.box is None else turn % ranks)
        turn += window.box is not None
    return owners


@dataclass
class SharedWindows:
    """Rank 0's window runner: its own windows computed here (`local`), the others' received from their
    ranks. Called for every window in order, it gives out the windows with a mask in turn, as
    `window_owners` does for the other ranks."""

    local: LocalWindows
    world: int
    turn: int = 0  # windows with a mask seen so far

    def __call__(self, window: Window, buffer: dict[int, Slot], timings: Timings) -> list[np.ndarray]:
        owner = 0
        if window.box is not None:
            owner, self.turn = self.turn % self.world, self.turn + 1
        if owner == 0:
            return self.local(window, buffer, timings)
        with timings.stage("other ranks"):
            height, width = buffer[window.start].image.shape[:2]
            count = window.frames - window.known
            frames = torch.empty(count, height, width, 3, dtype=torch.uint8, device=self.local.remover.device)
            with collective():
                dist.recv(frames, owner)
            return list(frames.cpu().numpy())


def compute_own_windows(
    remover: Remover,
    plan: Plan,
    frames: Iterable[tuple[np.ndarray, int | None]],
    masks: Iterable[np.ndarray],
    run: RunOptions,
    rank: int,
    world: int,
) -> None:
    """A rank other than 0: read the clip, compute this rank's windows as rank 0 would, and send each
    one's finished frames to rank 0. Holds one window of frames at a time."""
    if plan.options.blend != "crossfade":
        raise RemoverError("only crossfaded windows can be computed apart")
    owners = window_owners(plan, world)
    mine = [window for window, owner in zip(plan.windows, owners) if owner == rank]
    local = LocalWindows(remover, run)
    inputs = zip(frames, masks)
    buffer: dict[int, Slot] = {}
    read = 0
    for turn, window in enumerate(mine):
        while read < window.stop:
            slot = next_slot(inputs, read, plan.frame_count)
            if read >= window.start:  # frames before it are other ranks' (later windows start later)
                buffer[read] = slot
            read += 1
        finished = local(window, buffer, Timings())
        with collective():
            dist.send(torch.from_numpy(np.stack(finished)).to(remover.device), 0)
        keep_from = mine[turn + 1].start if turn + 1 < len(mine) else read
        for done in [i for i in buffer if i < keep_from]:
            del buffer[done]
