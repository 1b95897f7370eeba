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
    with scratch_folder(spill_folder, "segment") as folder:
        run = _Propagation(model, iter(frames), frame_count, frame_inputs(prompts), Path(folder))
        try:
            run.read_to_last_prompt(display, progress)
            run.track_backward(progress)
            yield from run.track_forward(progress)
        finally:
            run.close()


class _Propagation:
    """The state the three passes of `propagate` share: the frames still to decode, each object's
    prompts and memory bank, and the two spill files in the scratch folder."""

    def __init__(
        self,
        model: TrackingModel,
        frames: Iterator[np.ndarray],
        frame_count: int,
        inputs: dict[int, dict[int, list[Prompt]]],
        folder: Path,
    ) -> None:
        self.model, self.frames, self.frame_count, self.inputs, self.folder = model, frames, frame_count, inputs, folder
        self.ids = sorted(inputs)
        self.first = {object_id: min(inputs[object_id]) for object_id in self.ids}
        self.last_prompted = max(max(frames_of) for frames_of in inputs.values())
        self.keep, self.size = model.memory_frames, model.image_size
        self.banks = {object_id: new_bank() for object_id in self.ids}
        self.read = ArraySpill(folder / "frames", (self.size, self.size, 3), np.uint8)
        self.backward: ArraySpill | None = None  # made on the first backward output (its shape is the model's)

    def read_to_last_prompt(self, display: tuple[int, int], progress: bool) -> None:
        """Pass 1: frames 0 to the last prompted one to disk, and every object's conditioning output on
        its prompted frames."""
        shown = progress and self.last_prompted > 0
        for frame in _bar(range(self.last_prompted + 1), "reading to the last prompt", shown):
            image = self._next_input(frame)
            self.read.put(frame, image)
            prompted = [object_id for object_id in self.ids if frame in self.inputs[object_id]]
            if prompted:
                self._condition(image, frame, prompted, display)

    def _next_input(self, frame: int) -> np.ndarray:
        """The next decoded frame at the model's input size; the clip ending before its last prompt is an error."""
        image = next(self.frames, None)
        if image is None:
            raise RemoverError(f"the clip ended at frame {frame}, before its prompted frame {self.last_prompted}")
        return model_input(image, self.size)

    def _condition(self, image: np.ndarray, frame: int, prompted: list[int], display: tuple[int, int]) -> None:
        """The conditioning outputs of the objects prompted on `frame`, into their banks."""
        features = self.model.features(image)
        for object_id in prompted:
            points, labels = prompt_points(self.inputs[object_id][frame], display, self.size)
            output = self.model.conditioned(features, frame, points, labels, self.frame_count)
            self.banks[object_id]["cond_frame_outputs"][frame] = output

    def track_backward(self, progress: bool) -> None:
        """Pass 2: from the frame before the latest first prompt down to frame 0, each object tracked in
        reverse before its first prompt, the logits to disk; the tracked memory is then dropped so the
        forward pass starts from the prompts alone."""
        latest_first = max(self.first.values())
        for frame in _bar(range(latest_first - 1, -1, -1), "tracking backward", progress and latest_first > 0):
            features = self.model.features(self.read.get(frame))
            for slot, object_id in enumerate(self.ids):
                if frame < self.first[object_id]:
                    output = self.model.tracked(features, frame, self.banks[object_id], self.frame_count, reverse=True)
                    self._spill_backward(frame * len(self.ids) + slot, output)
                    remember(self.banks[object_id], frame, output, self.keep)
        for bank in self.banks.values():
            bank["non_cond_frame_outputs"].clear()

    def _spill_backward(self, slot: int, output: Output) -> None:
        """One backward output's logits to the backward spill, made at the first one's shape."""
        if self.backward is None:
            shape = tuple(output["pred_masks"].shape)
            self.backward = ArraySpill(self.folder / "backward", shape, np.float32)
        self.backward.put(slot, _logits(output).numpy())

    def track_forward(self, progress: bool) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
        """Pass 3: every frame in order to the clip's last decoded one, with each object's logits."""
        forward = _bar(None, "tracking forward", progress, total=self.frame_count)
        try:
            for frame in itertools.count():
                if frame <= self.last_prompted:
                    image = None  # read from disk when a frame needs tracking
                else:
                    image = next(self.frames, None)
                    if image is None:
                        return
                    image = model_input(image, self.size)
                logits = self._frame_logits(frame, image)
                forward.update()
                yield frame, logits
        finally:
            forward.close()

    def _frame_logits(self, frame: int, image: np.ndarray | None) -> dict[int, torch.Tensor]:
        """Each object's logits on `frame`: its backward result before its first prompt, its prompt's
        result on a prompted frame, else tracked forward (features computed once, only if needed;
        `image` None means read the frame from disk)."""
        features = None
        logits: dict[int, torch.Tensor] = {}
        for slot, object_id in enumerate(self.ids):
            bank = self.banks[object_id]
            if frame < self.first[object_id]:
                assert self.backward is not None  # the backward pass wrote every frame before a first prompt
                logits[object_id] = torch.from_numpy(self.backward.get(frame * len(self.ids) + slot))
            elif frame in bank["cond_frame_outputs"]:
                logits[object_id] = _logits(bank["cond_frame_outputs"][frame])
            else:
                if features is None:
                    features = self.model.features(self.read.get(frame) if image is None else image)
                output = self.model.tracked(features, frame, bank, self.frame_count, reverse=False)
                logits[object_id] = _logits(output)
                remember(bank, frame, output, self.keep)
        return logits

    def close(self) -> None:
        """Close the spill files (the scratch folder that holds them is removed by its owner)."""
        self.read.close()
        if self.backward is not None:
            self.backward.close()


def _bar(items: Iterable[int] | None, description: str, shown: bool, total: int | None = None) -> tqdm:
    return tqdm(items, desc=description, unit="frame", total=total, disable=not shown, leave=False)
