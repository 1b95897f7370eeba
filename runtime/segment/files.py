"""Segmenting a clip into files: the mask (the union of the objects), optionally an id video and a
tinted preview, all written frame by frame under temporary names and renamed at the end.

The mask is white (255) where any object is, black elsewhere, in the clip's display size and
orientation: a video (lossless RGB, so `runtime.run --mask` reads back exactly these bits) or a
folder of PNGs, chosen by the output's suffix as runtime.io's writers choose. The id video holds each
pixel's object id as a grey level (0: none; where objects overlap, the larger id). The preview is the
clip with each object tinted in its own colour.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from runtime.errors import RemoverError
from runtime.io.outputs import scratch_folder
from runtime.io.paths import check_distinct
from runtime.io.reader import ClipInfo, open_clip
from runtime.io.writer import CONTAINER_CODECS, ClipWriter, check_output, open_writer
from runtime.segment.model import model_choice
from runtime.segment.options import SegmentOptions
from runtime.segment.prompts import Prompt, check_prompts, frame_inputs, object_ids
from runtime.segment.segmenter import Segmenter, load_segmenter

PALETTE = np.array(  # one colour an object, in id order, repeating
    [(255, 64, 64), (64, 160, 255), (64, 220, 96), (255, 200, 40), (200, 80, 255), (0, 220, 220), (255, 128, 0)],
    np.float32,
)
TINT = 0.5  # how much of an object's colour covers it in the preview
RELEASED_INPUT = 1024  # the released SAM 2 configs' image_size


@dataclass(frozen=True)
class SegmentResult:
    """What `segment_file` wrote: the mask, and the id video and preview when asked; per object, the
    frames where its mask is not empty."""

    mask: Path
    frames: int
    objects: dict[int, int]
    ids: Path | None = None
    preview: Path | None = None

    def describe(self) -> str:
        objects = ", ".join(f"object {object_id} on {count} frame(s)" for object_id, count in self.objects.items())
        extras = "".join(f", {what} {path}" for what, path in (("ids", self.ids), ("preview", self.preview)) if path)
        return f"wrote the mask of {self.frames} frame(s) to {self.mask} ({objects}){extras}"


def describe_segmentation(prompts: list[Prompt], options: SegmentOptions, info: ClipInfo) -> list[str]:
    """What segmenting will do, for a plan or a dry run (nothing is loaded)."""
    size = f"{options.image_size} px" if options.image_size else "the config's input size"
    checkpoint, config = model_choice(options)
    if options.checkpoint is None:
        checkpoint = f"the default {checkpoint}"
    lines = [f"segment: SAM 2 ({config}, {checkpoint}) at {size}, on {options.device or 'the best device'}"]
    last = info.frame_count - 1
    inputs = frame_inputs(prompts)
    for object_id in object_ids(prompts):
        frames = sorted(inputs[object_id])
        listed = "; ".join(prompt.describe() for frame in frames for prompt in inputs[object_id][frame])
        span = f"forward over {frames[0]}-{last}" + (f", backward over {frames[0] - 1}-0" if frames[0] else "")
        lines.append(f"  object {object_id}: {listed}; tracked {span}")
    finish = f"grown {options.grow} px" if options.grow >= 0 else f"shrunk {-options.grow} px"
    lines.append(f"  masks {finish}, holes {'filled' if options.fill_holes else 'kept'}")
    spilled = max(prompt.frame for prompt in prompts) + 1
    if spilled > 1:
        side = options.image_size or RELEASED_INPUT
        frames_mb = spilled * side * side * 3 / 1e6
        at = f"{side} px" if options.image_size else f"{side} px, the released configs' size"
        lines.append(
            f"  {spilled} frame(s) up to the last prompt go to disk beside the output: {frames_mb:.0f} MB at {at}"
        )
    return lines


def _tinted(image: np.ndarray, masks: dict[int, np.ndarray], ids: list[int]) -> np.ndarray:
    tinted = image.astype(np.float32)
    for object_id, mask in masks.items():
        colour = PALETTE[ids.index(object_id) % len(PALETTE)]
        tinted[mask] = tinted[mask] * (1 - TINT) + colour * TINT
    return np.round(tinted).astype(np.uint8)


def _id_image(masks: dict[int, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    ids = np.zeros(shape, np.uint8)
    for object_id in sorted(masks):
        ids[masks[object_id]] = object_id
    return np.repeat(ids[..., None], 3, axis=2)


def _writers(paths: dict[str, Path | None], info: ClipInfo, overwrite: bool) -> dict[str, Path]:
    """The outputs to write (all checked, distinct, none the input), before any work."""
    named = {what: Path(path) for what, path in paths.items() if path is not None}
    check_distinct(named.values(), [info.path])
    for what, path in named.items():
        check_output(path, info, overwrite=overwrite, lossless=what != "preview" and _is_video(path))
    return named


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in CONTAINER_CODECS


def segment_file(
    video: str | Path,
    out: str | Path,
    prompts: list[Prompt],
    options: SegmentOptions,
    *,
    segmenter: Segmenter | None = None,
    ids_out: str | Path | None = None,
    preview: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> SegmentResult:
    """Segment `video` from `prompts` and write the mask to `out` (and the id video, the preview).
    Every check (prompts against the clip, outputs) happens before the model is loaded; `segmenter`
    reuses a loaded one. Written under temporary names: an error or Ctrl-C leaves nothing."""
    with open_clip(video) as reader:
        info = reader.info
        check_prompts(prompts, info)
        source = replace(info, streams=())  # masks carry no audio
        outputs = _writers({"mask": Path(out), "ids": ids_out, "preview": preview}, source, overwrite)
        say(f"{info.path}: {info.describe()}")
        for line in describe_segmentation(prompts, options, info):
            say(line)
        if segmenter is None:
            say(f"loading SAM 2 ({options.checkpoint or 'the default checkpoint'})")
            segmenter = load_segmenter(options)
        ids = object_ids(prompts)
        counts = dict.fromkeys(ids, 0)
        writers: dict[str, ClipWriter] = {}
        try:
            for what, path in outputs.items():
                writers[what] = open_writer(
                    path, source, overwrite=overwrite, lossless=what != "preview" and _is_video(path)
                )
            frames = iter(reader)  # a second decode in step with the tracker's: timestamps, preview pixels
            for masks in segmenter.track(video, prompts, progress, spill_folder=outputs["mask"].parent):
                frame = next(frames, None)
                if frame is None:
                    raise RemoverError(f"{info.path} decoded to fewer frames on a second read")
                union = np.zeros((info.height, info.width), bool)
                for object_id, mask in masks.items():
                    union |= mask
                    counts[object_id] += bool(mask.any())
                writers["mask"].write(np.repeat((union * np.uint8(255))[..., None], 3, axis=2), frame.pts)
                if "ids" in writers:
                    writers["ids"].write(_id_image(masks, union.shape), frame.pts)
                if "preview" in writers:
                    writers["preview"].write(_tinted(frame.image, masks, ids), frame.pts)
            for writer in writers.values():
                writer.commit()
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
    return SegmentResult(
        outputs["mask"], writers["mask"].frames_written, counts, outputs.get("ids"), outputs.get("preview")
    )


@contextmanager
def prompted_mask(
    video: str | Path,
    prompts: list[Prompt],
    options: SegmentOptions,
    *,
    segmenter: Segmenter | None = None,
    save_mask: str | Path | None = None,
    work_folder: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Iterator[Path]:
    """Segment `video` and give the mask's path for the remover's --mask: `save_mask` when given (kept),
    else a temporary lossless video (FFV1, small for masks) in a hidden folder in `work_folder`
    (default the system's temporary folder; the remover's output folder is a good one: the frames up
    to the last prompt are spilled there too), removed when the block ends."""
    settings = {"segmenter": segmenter, "progress": progress, "say": say}
    if save_mask is not None:
        segment_file(video, save_mask, prompts, options, overwrite=overwrite, **settings)
        yield Path(save_mask)
        return
    with scratch_folder(work_folder, "segment-mask") as folder:
        mask = Path(folder) / "mask.mkv"
        segment_file(video, mask, prompts, options, **settings)
        yield mask
