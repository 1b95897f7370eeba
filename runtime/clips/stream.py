"""Run a plan over a clip as a stream: frames in, windows through the one-pass pipeline, finished
frames out as soon as they are final.

    frames + masks (lazy) -> buffer of the current window's frames -> Remover.run_window (the window's
    box resized and dilated, encode -> denoise -> decode, composited into the native frames) ->
    (crossfade with the previous window over the overlap) -> sink, frame by frame

Host memory: the frames of one window at native resolution (uint8), their masks (only each mask's
bounding box is kept), the next window's overlap, and one window's generation at the working size
(fp32); nothing grows with the clip's length. See `host_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from runtime.clips.plan import Box, Plan, Window
from runtime.errors import RemoverError
from runtime.execution.memory_fit import working_bytes
from runtime.pipeline.composite import to_uint8
from runtime.pipeline.coverage import mask_box
from runtime.pipeline.preprocess import CHUNK_PIXELS
from runtime.pipeline.timing import Timings

if TYPE_CHECKING:
    from runtime.options import RunOptions
    from runtime.pipeline.remover import Remover

ENCODER_QUEUE_FRAMES = 50  # x264 at its default preset: a 40-frame lookahead, B-frames and frame threads

# (finished frame uint8 [H, W, 3], its presentation timestamp or None)
Sink = Callable[[np.ndarray, "int | None"], None]


@dataclass
class Slot:
    """One buffered frame: the input, its mask's bounding box and pixels there, its timestamp, and its
    composited result once a window has made it."""

    image: np.ndarray
    mask_box: Box | None
    mask_pixels: np.ndarray | None
    pts: int | None
    output: np.ndarray | None = None

    def mask_in(self, box: Box) -> np.ndarray:
        """The mask over `box` (bool [box.height, box.width])."""
        out = np.zeros((box.height, box.width), dtype=bool)
        m = self.mask_box
        if m is None:
            return out
        top, left, bottom, right = (
            max(m.top, box.top),
            max(m.left, box.left),
            min(m.bottom, box.bottom),
            min(m.right, box.right),
        )
        if top < bottom and left < right:
            out[top - box.top : bottom - box.top, left - box.left : right - box.left] = self.mask_pixels[
                top - m.top : bottom - m.top, left - m.left : right - m.left
            ]
        return out


def make_slot(image: np.ndarray, mask: np.ndarray, pts: int | None) -> Slot:
    box = mask_box(mask)
    pixels = None if box is None else mask[box.top : box.bottom, box.left : box.right].copy()
    return Slot(image, box, pixels, pts)


def next_slot(inputs: Iterator[tuple[tuple[np.ndarray, int | None], np.ndarray]], read: int, total: int) -> Slot:
    """The next frame and mask as a slot; a clip that ends early is a RemoverError."""
    try:
        (image, pts), mask = next(inputs)
    except StopIteration:
        raise RemoverError(f"the video ended after {read} of its {total} frames") from None
    return make_slot(image, mask, pts)


def host_bytes(plan: Plan) -> int:
    """What the stream holds on the host at most, beyond the models: one window of native frames (and,
    crossfading, the overlap's second result), the window's input at the working size (uint8) and its
    generation (fp32), the masks (counted as whole frames, their worst case), the fp32 temporaries
    of converting CHUNK_PIXELS at a time (a handful of RGB tensors), and the video encoder's queue of
    frames (x264's lookahead and threads: about ENCODER_QUEUE_FRAMES frames of 4:2:0)."""
    height, width = plan.frame_size
    longest = max((w.frames for w in plan.windows), default=0)
    native = longest * height * width * (3 + 1)
    if plan.options.blend == "crossfade":
        native += plan.options.overlap * height * width * 3
    working = max((working_bytes(w.frames, *w.size) for w in plan.model_windows), default=0)
    encoder = ENCODER_QUEUE_FRAMES * height * width * 3 // 2
    return native + working + 6 * CHUNK_PIXELS * 3 * 4 + encoder


class WindowRunner(Protocol):
    """Makes a window's finished frames: those after its `known` ones, composited into the native frames
    (uint8 [H, W, 3] each). `LocalWindows` computes them here; runtime/distributed gives runners that
    take some windows from other processes."""

    def __call__(self, window: Window, buffer: dict[int, Slot], timings: Timings) -> list[np.ndarray]: ...


@dataclass
class LocalWindows:
    """Every window computed in this process by `remover`, window k's noise drawn from run.seed + k."""

    remover: Remover
    run: RunOptions

    def __call__(self, window: Window, buffer: dict[int, Slot], timings: Timings) -> list[np.ndarray]:
        return compute_window(self.remover, window, buffer, self.run, timings)


def run_plan(
    plan: Plan,
    frames: Iterable[tuple[np.ndarray, int | None]],
    masks: Iterable[np.ndarray],
    sink: Sink,
    windows: WindowRunner,
    progress: bool = True,
) -> Timings:
    """Run every window of `plan` over `frames` ((uint8 [H, W, 3], pts) in order) and `masks` (bool
    [H, W], one per frame), handing each finished frame to `sink` in order; `windows` makes each window's
    frames (`LocalWindows(remover, run)` in one process). With LocalWindows a clip of one window is
    exactly the one-pass pipeline's result. Returns the seconds spent in each stage, summed over the
    windows."""
    timings = Timings()
    inputs: Iterator[tuple[tuple[np.ndarray, int | None], np.ndarray]] = zip(frames, masks)
    buffer: dict[int, Slot] = {}
    read = 0
    written = 0
    bar = tqdm(total=plan.frame_count, desc="frames", unit="frame", disable=not progress)
    try:
        for index, window in enumerate(plan.windows):
            bar.set_postfix_str(f"window {index + 1}/{len(plan.windows)}")
            with timings.stage("read"):
                while read < window.stop:
                    buffer[read] = next_slot(inputs, read, plan.frame_count)
                    read += 1

            outputs = windows(window, buffer, timings)
            with timings.stage("composite"):
                shared = plan.windows[index - 1].stop - window.start if index else 0  # frames the last window made too
                for offset, output in enumerate(outputs):
                    slot = buffer[window.start + window.known + offset]
                    fade = window.known == 0 and offset < shared
                    slot.output = _crossfade(slot.output, output, offset, shared) if fade else output

            final = plan.windows[index + 1].start if index + 1 < len(plan.windows) else plan.frame_count
            if plan.options.blend == "continue":
                final = window.stop
            with timings.stage("write"):
                while written < final:
                    slot = buffer[written]
                    sink(slot.output, slot.pts)
                    written += 1
                    bar.update()
                keep_from = plan.windows[index + 1].start if index + 1 < len(plan.windows) else read
                for done in [i for i in buffer if i < keep_from]:
                    del buffer[done]
    finally:
        bar.close()
    return timings


def _crossfade(previous: np.ndarray, current: np.ndarray, offset: int, overlap: int) -> np.ndarray:
    """Frame `offset` of the overlap: from the previous window's result towards this one's, linearly."""
    weight = (offset + 1) / (overlap + 1)
    blended = torch.lerp(torch.from_numpy(previous).float(), torch.from_numpy(current).float(), weight)
    return blended.round().clamp(0, 255).to(torch.uint8).numpy()


def compute_window(
    remover: Remover, window: Window, buffer: dict[int, Slot], run: RunOptions, timings: Timings
) -> list[np.ndarray]:
    """The composited frames after the window's known ones (the inputs when nothing is masked)."""
    slots = [buffer[i] for i in range(window.start, window.stop)]
    if window.box is None:
        return [slot.image for slot in slots[window.known :]]
    box = window.box
    with timings.stage("preprocess"):
        images = [s.output if i < window.known else s.image for i, s in enumerate(slots)]
        cleared = np.zeros((box.height, box.width), bool)  # the known frames' masks
        masks = np.stack([s.mask_in(box) if i >= window.known else cleared for i, s in enumerate(slots)])
    out = remover.run_window(
        images,
        masks,
        box,
        window.size,
        window.compositing,
        known=window.known,
        steps=run.steps,
        seed=run.seed + window.index,
        paste_back=run.paste_back,
        progress=run.progress,
    )
    timings.merge(remover.timings)
    if not run.paste_back:
        return list(to_uint8(out.generated))
    return out.frames
