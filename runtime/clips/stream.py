"""Run a plan over a clip as a stream: frames in, windows through the one-pass pipeline, finished
frames out as soon as they are final.

    frames + masks (lazy) -> buffer of the current window's frames -> crop the window's box, bring it
    to the working size -> Remover (encode -> denoise -> decode) -> composite into the native frames
    -> (crossfade with the previous window over the overlap) -> sink, frame by frame

Host memory: the frames of one window at native resolution (uint8), their masks (only each mask's
bounding box is kept), the next window's overlap, and one window's generation at the working size
(fp32); nothing grows with the clip's length. See `host_bytes`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from runtime.clips.plan import Box, Plan, Window
from runtime.errors import RemoverError
from runtime.pipeline.composite import composite_window, to_uint8
from runtime.pipeline.preprocess import CHUNK_PIXELS, dilate, resize_frames, shrink_masks

if TYPE_CHECKING:
    from runtime.distributed.parallel import WindowShare
    from runtime.pipeline.remover import Remover

ENCODER_QUEUE_FRAMES = 50  # x264 at its default preset: a 40-frame lookahead, B-frames and frame threads

# (finished frame uint8 [H, W, 3], its presentation timestamp or None)
Sink = Callable[[np.ndarray, "int | None"], None]


def mask_box(mask: np.ndarray) -> Box | None:
    """The bounding box of a bool mask [H, W], or None if it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


@dataclass
class _Slot:
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


def _slot(image: np.ndarray, mask: np.ndarray, pts: int | None) -> _Slot:
    box = mask_box(mask)
    pixels = None if box is None else mask[box.top : box.bottom, box.left : box.right].copy()
    return _Slot(image, box, pixels, pts)


def _next_slot(inputs: Iterator[tuple[tuple[np.ndarray, int | None], np.ndarray]], read: int, total: int) -> _Slot:
    """The next frame and mask as a slot; a clip that ends early is a RemoverError."""
    try:
        (image, pts), mask = next(inputs)
    except StopIteration:
        raise RemoverError(f"the video ended after {read} of its {total} frames") from None
    return _slot(image, mask, pts)


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
    working = max((w.frames * w.size[0] * w.size[1] * (3 + 1 + 3 * 4) for w in plan.model_windows), default=0)
    encoder = ENCODER_QUEUE_FRAMES * height * width * 3 // 2
    return native + working + 6 * CHUNK_PIXELS * 3 * 4 + encoder


def run_plan(
    remover: Remover,
    plan: Plan,
    frames: Iterable[tuple[np.ndarray, int | None]],
    masks: Iterable[np.ndarray],
    sink: Sink,
    *,
    steps: int = 6,
    seed: int = 42,
    paste_back: bool = True,
    progress: bool = True,
    share: WindowShare | None = None,
) -> dict[str, float]:
    """Run every window of `plan` over `frames` ((uint8 [H, W, 3], pts) in order) and `masks` (bool
    [H, W], one per frame), handing each finished frame to `sink` in order. Window k's noise is drawn
    from seed + k, so a clip of one window is exactly the one-pass pipeline's result. Without
    `paste_back` the generation replaces the whole window (the plan must be whole-frame). With
    `share` (rank 0 of a group, crossfaded windows) the other ranks' windows come from them
    (`run_shared_windows`). Returns the seconds spent in each stage, summed over the windows."""
    owners = window_owners(plan, share.world if share else 1)
    timings: dict[str, float] = {}
    inputs: Iterator[tuple[tuple[np.ndarray, int | None], np.ndarray]] = zip(frames, masks)
    buffer: dict[int, _Slot] = {}
    read = 0
    written = 0
    bar = tqdm(total=plan.frame_count, desc="frames", unit="frame", disable=not progress)
    try:
        for index, window in enumerate(plan.windows):
            bar.set_postfix_str(f"window {index + 1}/{len(plan.windows)}")
            start = time.perf_counter()
            while read < window.stop:
                buffer[read] = _next_slot(inputs, read, plan.frame_count)
                read += 1
            timings["read"] = timings.get("read", 0.0) + time.perf_counter() - start

            if owners[index] == 0:
                outputs = _run_window(remover, window, buffer, steps, seed + index, paste_back, progress, timings)
            else:
                start = time.perf_counter()
                outputs = share.receive(owners[index], window.frames - window.known, (*plan.frame_size, 3))
                timings["other ranks"] = timings.get("other ranks", 0.0) + time.perf_counter() - start
            start = time.perf_counter()
            shared = plan.windows[index - 1].stop - window.start if index else 0  # frames the last window made too
            for offset, output in enumerate(outputs):
                slot = buffer[window.start + window.known + offset]
                fade = window.known == 0 and offset < shared
                slot.output = _crossfade(slot.output, output, offset, shared) if fade else output
            timings["composite"] = timings.get("composite", 0.0) + time.perf_counter() - start

            final = plan.windows[index + 1].start if index + 1 < len(plan.windows) else plan.frame_count
            if plan.options.blend == "continue":
                final = window.stop
            start = time.perf_counter()
            while written < final:
                slot = buffer[written]
                sink(slot.output, slot.pts)
                written += 1
                bar.update()
            keep_from = plan.windows[index + 1].start if index + 1 < len(plan.windows) else read
            for done in [i for i in buffer if i < keep_from]:
                del buffer[done]
            timings["write"] = timings.get("write", 0.0) + time.perf_counter() - start
    finally:
        bar.close()
    return timings


def window_owners(plan: Plan, ranks: int) -> list[int]:
    """The rank that computes each window: the windows with a mask in turn, those without on rank 0
    (they copy their input)."""
    owners, turn = [], 0
    for window in plan.windows:
        owners.append(0 if window.box is None else turn % ranks)
        turn += window.box is not None
    return owners


def run_shared_windows(
    remover: Remover,
    plan: Plan,
    frames: Iterable[tuple[np.ndarray, int | None]],
    masks: Iterable[np.ndarray],
    share: WindowShare,
    *,
    steps: int = 6,
    seed: int = 42,
    paste_back: bool = True,
) -> None:
    """A rank other than 0 of a group sharing crossfaded windows: read the clip, compute this rank's
    windows as `run_plan` would, and send each one's finished frames to rank 0. Holds one window of
    frames at a time."""
    if plan.options.blend != "crossfade":
        raise RemoverError("only crossfaded windows can be computed apart")
    owners = window_owners(plan, share.world)
    mine = [window for window, owner in zip(plan.windows, owners) if owner == share.rank]
    inputs = zip(frames, masks)
    buffer: dict[int, _Slot] = {}
    read = 0
    for turn, window in enumerate(mine):
        while read < window.stop:
            slot = _next_slot(inputs, read, plan.frame_count)
            if read >= window.start:  # frames before it are other ranks' (later windows start later)
                buffer[read] = slot
            read += 1
        share.send(_run_window(remover, window, buffer, steps, seed + window.index, paste_back, False, {}))
        keep_from = mine[turn + 1].start if turn + 1 < len(mine) else read
        for done in [i for i in buffer if i < keep_from]:
            del buffer[done]


def _crossfade(previous: np.ndarray, current: np.ndarray, offset: int, overlap: int) -> np.ndarray:
    """Frame `offset` of the overlap: from the previous window's result towards this one's, linearly."""
    weight = (offset + 1) / (overlap + 1)
    blended = torch.lerp(torch.from_numpy(previous).float(), torch.from_numpy(current).float(), weight)
    return blended.round().clamp(0, 255).to(torch.uint8).numpy()


def _run_window(
    remover: Remover,
    window: Window,
    buffer: dict[int, _Slot],
    steps: int,
    seed: int,
    paste_back: bool,
    progress: bool,
    timings: dict[str, float],
) -> list[np.ndarray]:
    """The composited frames after the window's known ones (the inputs when nothing is masked)."""
    slots = [buffer[i] for i in range(window.start, window.stop)]
    new = slots[window.known :]
    if window.box is None:
        return [slot.image for slot in new]
    start = time.perf_counter()
    box, device = window.box, remover.device
    region = (slice(box.top, box.bottom), slice(box.left, box.right))
    images = np.stack([(s.output if i < window.known else s.image)[region] for i, s in enumerate(slots)])
    masks = np.stack(
        [s.mask_in(box) if i >= window.known else np.zeros(images.shape[1:3], bool) for i, s in enumerate(slots)]
    )
    images = resize_frames(images, window.size, device)
    masks = shrink_masks(masks, window.size, device)
    timings["preprocess"] = timings.get("preprocess", 0.0) + time.perf_counter() - start

    generated = remover(
        images,
        masks,
        height=window.size[0],
        width=window.size[1],
        num_inference_steps=steps,
        mask_dilation=window.dilation,
        seed=seed,
        paste_back=False,
        progress=progress,
    )
    for stage, seconds in remover.timings.items():
        timings[stage] = timings.get(stage, 0.0) + seconds
    generated = generated[window.known :]
    if not paste_back:
        return list(to_uint8(generated))
    start = time.perf_counter()
    dilated = dilate(torch.from_numpy(masks[window.known :]).to(device), window.dilation)
    outputs = composite_window([s.image for s in new], generated, dilated, box, window.feather)
    timings["composite"] = timings.get("composite", 0.0) + time.perf_counter() - start
    return outputs
