"""A loaded segmenter: masks at the clip's display size from prompts, on one frame or over a whole clip."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from runtime.errors import RemoverError
from runtime.io.reader import open_clip
from runtime.segment.model import load_sam2
from runtime.segment.options import SegmentOptions
from runtime.segment.postprocess import finish_mask
from runtime.segment.prompts import Prompt, check_prompts, frame_inputs
from runtime.segment.tracker import TrackingModel, model_input, prompt_points, propagate


class Segmenter:
    """A tracking model (SAM 2, or a stand-in in tests) and how its masks are finished."""

    def __init__(self, model: TrackingModel, options: SegmentOptions) -> None:
        self.model = model
        self.options = options
        self._last_frame: tuple[bytes, Any] | None = None  # (digest of a model input, its features)

    def masks(self, logits: dict[int, torch.Tensor], height: int, width: int) -> dict[int, np.ndarray]:
        """Mask logits [1, 1, h, w] per object -> bool [H, W] per object, finished (SAM 2's rule: the
        logits scaled bilinearly to the display size, positive = object)."""
        finished = {}
        for object_id, values in logits.items():
            if values.shape[-2:] != (height, width):
                values = F.interpolate(values.float(), size=(height, width), mode="bilinear", align_corners=False)
            if not torch.isfinite(values).all():
                raise RemoverError(f"the segmenter's output for object {object_id} is not finite")
            mask = (values[0, 0] > 0).numpy()
            finished[object_id] = finish_mask(mask, self.options.grow, self.options.fill_holes)
        return finished

    def frame_masks(self, frame: np.ndarray, prompts: list[Prompt]) -> dict[int, np.ndarray]:
        """One frame's masks, bool [H, W] per object, from prompts on it (their `frame` is not read):
        what an app shows as the user clicks. The last frame's features are kept, so clicking again on
        the same frame runs only the prompt and mask heads."""
        height, width = frame.shape[:2]
        image = model_input(frame, self.model.image_size)
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        if self._last_frame is None or self._last_frame[0] != digest:
            self._last_frame = (digest, self.model.features(image))
        features = self._last_frame[1]
        logits = {}
        for object_id, by_frame in frame_inputs(prompts).items():
            on_frame = [prompt for items in by_frame.values() for prompt in items]
            points, labels = prompt_points(
                sorted(on_frame, key=lambda p: p.kind != "box"), (width, height), image.shape[0]
            )
            output = self.model.conditioned(features, 0, points, labels, 1)
            logits[object_id] = output["pred_masks"].detach().float().cpu()
        return self.masks(logits, height, width)

    def track(
        self, video: str | Path, prompts: list[Prompt], progress: bool = True, spill_folder: str | Path | None = None
    ) -> Iterator[dict[int, np.ndarray]]:
        """Every frame's masks in order, bool [H, W] per object at the clip's display size, streamed
        (memory and disk: runtime.segment.tracker; the frames up to the last prompt go to a hidden
        folder in `spill_folder`, default the system's temporary folder). The prompts are checked
        before any frame is read."""
        with open_clip(video) as reader:
            info = reader.info
            check_prompts(prompts, info)
            frames = (frame.image for frame in reader)
            display = (info.width, info.height)
            stream = propagate(self.model, frames, display, info.frame_count, prompts, progress, spill_folder)
            try:
                for _, logits in stream:
                    yield self.masks(logits, info.height, info.width)
            finally:
                stream.close()


def load_segmenter(options: SegmentOptions) -> Segmenter:
    """SAM 2 as `options` name it, loaded (the `sam2` package is imported here; missing: one line
    naming the extra)."""
    return Segmenter(load_sam2(options), options)
