"""Streaming propagation of prompts over a clip: SAM 2's tracking loop with memory that does not grow
with the clip.

SAM 2's own video predictor decodes the whole clip to float32 at its input size before tracking and
keeps every frame's output. Here frames arrive one at a time (display RGB, resized to the model's
square input as uint8) and each object keeps only what the model reads (`MemoryBank`):
- its conditioning outputs: the frames it was prompted on (as many as the user gave);
- the outputs of the last `memory_frames` tracked frames in the direction of travel (SAM 2 reads the
  last num_maskmem - 1 for spatial memory, the last max_obj_ptrs_in_encoder - 1 for object
  pointers), the older ones dropped as each frame is added.

The passes, in this order, so that finished masks come out in frame order:
1. read frames 0 to the last prompted frame, writing each (uint8 at the input size) to a temporary
   file on disk, and compute every object's conditioning output on its prompted frames (all of them
   before any tracking, as SAM 2's predictor has them when it propagates);
2. backward: from the frame before the latest first-prompt down to frame 0, each object tracked in
   reverse from its first prompted frame, its mask logits written to a second temporary file;
3. forward: every frame in order, the ones already read taken from the file, then the rest of the
   clip decoded as it goes; an object is tracked forward from its first prompted frame.
An object's mask on a frame is its backward result before its first prompted frame, its prompt's
result on a prompted frame, and the forward result after (the two directions never overlap, so no
rule is needed to merge them: the backward pass starts from the prompts alone, as SAM 2's when it is
run in reverse on a fresh state). Host memory: one frame and the banks; disk: (last prompted frame
+ 1) frames at the input size (3 MB a frame at 1024) and the backward logits (256 KB a frame and
object at 1024), removed at the end, on errors and on Ctrl-C.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from runtime.errors import RemoverError
from runtime.io.outputs import scratch_folder, write_error
from runtime.segment.prompts import Prompt, frame_inputs

Output = dict[str, Any]  # SAM 2's per-frame output: "pred_masks" logits [1, 1, h, w] and its memory
MemoryBank = dict[str, dict[int, Output]]  # {"cond_frame_outputs": {...}, "non_cond_frame_outputs": {...}}
BOX_LABELS = (2, 3)  # SAM 2 takes a box as its two corners with these labels
POINT_LABEL = {"point": 1, "negative": 0}


class TrackingModel(Protocol):
    """What the propagation needs of a model: SAM 2 (runtime.segment.model.Sam2Model) or a stand-in."""

    image_size: int  # the side of the square input
    memory_frames: int  # how many tracked outputs before the current frame the model reads

    def features(self, image: np.ndarray) -> Any:
        """The image features of uint8 [S, S, 3]."""

    def conditioned(
        self, features: Any, frame: int, points: np.ndarray, labels: np.ndarray, frame_count: int
    ) -> Output:
        """An object's output from its prompts on `frame`: points float [P, 2] in input pixels, labels [P]."""

    def tracked(self, features: Any, frame: int, bank: MemoryBank, frame_count: int, reverse: bool) -> Output:
        """An object's output on `frame` from its memory."""


def new_bank() -> MemoryBank:
    return {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}


def remember(bank: MemoryBank, frame: int, output: Output, keep: int) -> None:
    """Add a tracked frame's output (its mask logits left out) and drop those `keep` or more frames away."""
    tracked = bank["non_cond_frame_outputs"]
    tracked[frame] = {key: value for key, value in output.items() if key != "pred_masks"}
    for stale in [other for other in tracked if abs(other - frame) >= keep]:
        del tracked[stale]


class ArraySpill:
    """Arrays of one shape and dtype in a file on disk, written and read by slot (plain file reads and
    writes, not a memory map, so nothing of it counts as the process's memory)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.shape, self.dtype = shape, np.dtype(dtype)
        self._size = int(np.prod(shape)) * self.dtype.itemsize
        self._path = path
        try:
            self._file = open(path, "w+b")  # noqa: SIM115 (closed by close(), the spill outlives one block)
        except OSError as exc:
            raise write_error(path, exc) from None

    def put(self, slot: int, array: np.ndarray) -> None:
        """Write a slot; a full disk is one RemoverError line (the caller's scratch folder goes)."""
        try:
            self._file.seek(slot * self._size)
            self._file.write(np.ascontiguousarray(array, dtype=self.dtype).tobytes())
            self._file.flush()  # a full disk says so here, not at some later read
        except OSError as exc:
            raise write_error(self._path, exc) from None

    def get(self, slot: int) -> np.ndarray:
        array = np.empty(self.shape, self.dtype)
        self._file.seek(slot * self._size)
        if self._file.readinto(memoryview(array).cast("B")) != self._size:
            raise RuntimeError(f"slot {slot} of {self._file.name} was never written")
        return array

    def close(self) -> None:
        self._file.close()


def model_input(image: np.ndarray, size: int) -> np.ndarray:
    """A display frame uint8 [H, W, 3] resized to the model's square input [size, size, 3] (bicubic, as
    SAM 2 resizes image files)."""
    if image.shape[:2] == (size, size):
        return image
    return np.array(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def prompt_points(prompts: list[Prompt], display: tuple[int, int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """One object's prompts on one frame (box first) as SAM 2's points [P, 2] in input pixels and labels [P]."""
    width, height = display
    scale = np.array([size / width, size / height])
    points, labels = [], []
    for prompt in prompts:
        if prompt.kind == "box":
            points += [prompt.coords[:2], prompt.coords[2:]]
            labels += BOX_LABELS
        else:
            points.append(prompt.coords)
            labels.append(POINT_LABEL[prompt.kind])
    return (np.array(points, np.float64) * scale).astype(np.float32), np.array(labels, np.int32)


def _logits(output: Output) -> torch.Tensor:
    return output["pred_masks"].detach().float().cpu()


def propagate(
    model: TrackingModel,
    frames: Iterator[np.ndarray],
    display: tuple[int, int],
    frame_count: int,
    prompts: list[Prompt],
    progress: bool = True,
    spill_folder: str | Path | None = None,
) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
    """(frame, object id -> mask logits [1, 1, h, w] on the CPU) for every frame in order, from display
    frames uint8 [H, W, 3] (`display` = (W, H)) and prompts already checked against the clip. See the
    module's docstring for the passes and what they keep."""
    inputs = frame_inputs(prompts)
    ids = sorted(inputs)
    first = {object_id: min(inputs[object_id]) for object_id in ids}
    last_prompted = max(max(frames_of) for frames_of in inputs.values())
    keep, size = model.memory_frames, model.image_size
    banks = {object_id: new_bank() for object_id in ids}
    frames = iter(frames)

    def next_input(frame: int) -> np.ndarray:
        image = next(frames, None)
        if image is None:
            raise RemoverError(f"the clip ended at frame {frame}, before its prompted frame {last_prompted}")
        return model_input(image, size)

    with scratch_folder(spill_folder, "segment") as folder:
        read = ArraySpill(Path(folder) / "frames", (size, size, 3), np.uint8)
        backward: ArraySpill | None = None
        forward = None
        try:
            # 1. frames up to the last prompted one, to disk; conditioning outputs on the prompted frames
            for frame in _bar(range(last_prompted + 1), "reading to the last prompt", progress and last_prompted > 0):
                image = next_input(frame)
                read.put(frame, image)
                prompted = [object_id for object_id in ids if frame in inputs[object_id]]
                if prompted:
                    features = model.features(image)
                    for object_id in prompted:
                        points, labels = prompt_points(inputs[object_id][frame], display, size)
                        output = model.conditioned(features, frame, points, labels, frame_count)
                        banks[object_id]["cond_frame_outputs"][frame] = output

            # 2. backward from each object's first prompt to frame 0, the logits to disk
            latest_first = max(first.values())
            for frame in _bar(range(latest_first - 1, -1, -1), "tracking backward", progress and latest_first > 0):
                features = model.features(read.get(frame))
                for slot, object_id in enumerate(ids):
                    if frame < first[object_id]:
                        output = model.tracked(features, frame, banks[object_id], frame_count, reverse=True)
                        if backward is None:
                            shape = tuple(output["pred_masks"].shape)
                            backward = ArraySpill(Path(folder) / "backward", shape, np.float32)
                        backward.put(frame * len(ids) + slot, _logits(output).numpy())
                        remember(banks[object_id], frame, output, keep)
            for bank in banks.values():
                bank["non_cond_frame_outputs"].clear()

            # 3. forward over the whole clip, in order (to its last decoded frame)
            forward = _bar(None, "tracking forward", progress, total=frame_count)
            for frame in itertools.count():
                if frame <= last_prompted:
                    image = None  # read from disk when a frame needs tracking
                else:
                    image = next(frames, None)
                    if image is None:
                        return
                    image = model_input(image, size)
                features = None
                logits: dict[int, torch.Tensor] = {}
                for slot, object_id in enumerate(ids):
                    if frame < first[object_id]:
                        logits[object_id] = torch.from_numpy(backward.get(frame * len(ids) + slot))
                    elif frame in banks[object_id]["cond_frame_outputs"]:
                        logits[object_id] = _logits(banks[object_id]["cond_frame_outputs"][frame])
                    else:
                        if features is None:
                            features = model.features(read.get(frame) if image is None else image)
                        output = model.tracked(features, frame, banks[object_id], frame_count, reverse=False)
                        logits[object_id] = _logits(output)
                        remember(banks[object_id], frame, output, keep)
                forward.update()
                yield frame, logits
        finally:
            if forward is not None:
                forward.close()
            read.close()
            if backward is not None:
                backward.close()


def _bar(items: Iterable[int] | None, description: str, shown: bool, total: int | None = None) -> tqdm:
    return tqdm(items, desc=description, unit="frame", total=total, disable=not shown, leave=False)
