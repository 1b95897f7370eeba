"""Masks for a video: one bool [H, W] per frame at the video's display size (True = remove), lazily.

`open_masks(path, video_info)` takes
- a mask video, read through `open_clip` (so its own rotation is honoured);
- a folder of images, one per frame in natural order, or one image used for every frame;
- a JSON file of boxes per frame:

      {"frames": {"0": [[x0, y0, x1, y1], ...], "12": [[40, 32.5, 120, 96]], ...}}

  keys are frame numbers from 0; boxes are [left, top, right, bottom] in the video's display pixels,
  right and bottom being the far edges (fractions allowed; a box covers every pixel it touches); a box
  reaching past the frame is cut to it; frames not listed have no mask. A tracker's per-frame xyxy
  boxes map onto it one to one.

Pixels become masks by `value > threshold`, on the alpha channel where an image or a video frame
has a non-trivial one (some pixel not opaque), else on the largest colour channel (`channel` forces
"alpha" or "luma"): white RGB with the object in alpha is the object, not the whole frame. Default thresholds:
images 0 (any nonzero pixel at any bit depth, as the released pipeline: a 16-bit label map's 1 of
65535 counts; a palette image's index with no palette entry counts), videos and JPEG images 127
(lossy coding leaves noise in black). Thresholds are in 8-bit units (x 257 for 16-bit images).
`invert` flips the result. A mask of another size with the video's aspect ratio is scaled to it:
down-scaling keeps every covered pixel (an output pixel is set when any mask pixel in its footprint
is), up-scaling takes the nearest. A mask the size of a 90/270-degree rotated video's stored frames
(drawn before rotation) is rotated to match, with a warning.

Every check (frame count, sizes, the box file) happens in `open_masks`, before any decoding work.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np

from runtime.errors import RemoverError, RemoverWarning
from runtime.io.images import IMAGE_SUFFIXES, JPEG_SUFFIXES, image_files, probe_images, read_levels
from runtime.io.reader import ClipInfo, open_clip, orient
from runtime.io.textfile import read_json

CHANNELS = ("auto", "alpha", "luma")
LOSSY_THRESHOLD = 127  # videos and JPEG images: lossy coding leaves faint noise in black areas
LUMA_WEIGHTS = np.array([299, 587, 114], dtype=np.uint32)  # BT.601 luma, as Pillow's "L" mode
ASPECT_TOLERANCE = 0.01  # a mask of another size is accepted when its aspect ratio matches this well


class MaskSource:
    """The masks of a video's frames, bool [H, W] at its display size. `frame_count` is known at once;
    each iteration starts over from the first frame."""

    def __init__(self, path: Path, frame_count: int, masks: Callable[[], Iterator[np.ndarray]]) -> None:
        self.path = path
        self.frame_count = frame_count
        self._masks = masks

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._masks()


def _channel_values(pixels: np.ndarray, channel: str, full: int = 255) -> np.ndarray:
    """[H, W] to threshold from RGB or RGBA pixels [H, W, 3 or 4] whose full scale is `full`."""
    has_alpha = pixels.shape[-1] == 4
    if channel == "alpha" or (channel == "auto" and has_alpha and pixels[..., 3].min() < full):
        return pixels[..., 3]
    # channel by channel: numpy's reductions over a last axis of 3 took 11 ms a 960x540 frame, this 0.4 ms
    red, green, blue = (pixels[..., c] for c in range(3))
    if channel == "luma":
        weighted = red * LUMA_WEIGHTS[0] + green * LUMA_WEIGHTS[1] + blue * LUMA_WEIGHTS[2]
        return (weighted + 500) // 1000
    return np.maximum(np.maximum(red, green), blue)


def _scale_axis(mask: np.ndarray, size: int, axis: int) -> np.ndarray:
    length = mask.shape[axis]
    if length > size:  # each output pixel is the OR of the mask pixels that fall in it
        return np.logical_or.reduceat(mask, np.arange(size) * length // size, axis=axis)
    if length < size:  # nearest: the mask pixel under each output pixel's centre
        return np.take(mask, (2 * np.arange(size) + 1) * length // (2 * size), axis=axis)
    return mask


def scale_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool [h, w] -> [H, W] (`size`): down-scaling keeps every covered pixel, up-scaling is nearest."""
    return _scale_axis(_scale_axis(mask, size[0], 0), size[1], 1)


def _fit(mask_size: tuple[int, int], video: ClipInfo, what: str) -> Callable[[np.ndarray], np.ndarray]:
    """How a mask of (width, height) `mask_size` becomes one of the video's display size; an error
    naming both sizes when it cannot."""
    (mask_w, mask_h), size = mask_size, (video.width, video.height)
    if mask_size == size:
        return lambda mask: mask
    if video.rotation in (90, 270) and mask_size == video.coded_size:
        warnings.warn(
            f"{what} is {mask_w}x{mask_h}, the size of the video's frames before its {video.rotation}-degree "
            "rotation: rotating it to match",
            RemoverWarning,
            stacklevel=3,
        )
        return partial(orient, rotation=video.rotation, mirrored=video.mirrored)
    aspect = video.width / video.height
    if abs(mask_w / mask_h - aspect) > ASPECT_TOLERANCE * aspect:
        raise RemoverError(
            f"{what} is {mask_w}x{mask_h} and the video {video.width}x{video.height}: neither the same size "
            "nor the same aspect ratio"
        )
    return partial(scale_mask, size=(video.height, video.width))


def _to_mask(
    pixels: np.ndarray,
    threshold: int,
    channel: str,
    invert: bool,
    fit: Callable[[np.ndarray], np.ndarray],
    full: int = 255,
) -> np.ndarray:
    """One mask from RGB(A) pixels of full scale `full`: threshold the channel (`threshold` in 8-bit
    units), invert, fit to the video."""
    return fit((_channel_values(pixels, channel, full) > threshold * (full // 255)) != invert)


def _image_mask(
    file: Path, threshold: int, channel: str, invert: bool, fit: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """The mask of one image file, read at its own bit depth."""
    levels, full = read_levels(file)
    return _to_mask(levels, threshold, channel, invert, fit, full)


def _video_masks(path: Path, video: ClipInfo, threshold: int | None, invert: bool, channel: str) -> MaskSource:
    reader = open_clip(path, alpha=True)
    info = reader.info
    if channel == "alpha" and not info.has_alpha:
        raise RemoverError(f"the mask video {path} has no alpha channel")
    if info.frame_count != video.frame_count:
        raise RemoverError(f"the mask video has {info.frame_count} frames, the video {video.frame_count}")
    fit = _fit((info.width, info.height), video, f"the mask video {path.name}")
    limit = LOSSY_THRESHOLD if threshold is None else threshold

    def masks() -> Iterator[np.ndarray]:
        return (_to_mask(frame.image, limit, channel, invert, fit) for frame in reader)

    return MaskSource(path, video.frame_count, masks)


def _image_masks(
    path: Path, files: list[Path], video: ClipInfo, threshold: int | None, invert: bool, channel: str
) -> MaskSource:
    header = probe_images(files, path)
    if channel == "alpha" and not header.has_alpha:
        raise RemoverError(f"the mask {path} has no alpha channel")
    what = f"the mask {path.name}" if path.is_file() else f"the masks in {path}"
    fit = _fit((header.width, header.height), video, what)

    def limit(file: Path) -> int:
        if threshold is not None:
            return threshold
        return LOSSY_THRESHOLD if file.suffix.lower() in JPEG_SUFFIXES else 0

    if path.is_file():  # one image for every frame: made once, shared read-only

        def same_mask() -> Iterator[np.ndarray]:
            mask = _image_mask(path, limit(path), channel, invert, fit)
            mask.flags.writeable = False
            return (mask for _ in range(video.frame_count))

        return MaskSource(path, video.frame_count, same_mask)
    if len(files) != video.frame_count:
        raise RemoverError(f"the mask folder {path} has {len(files)} images, the video {video.frame_count} frames")

    def masks() -> Iterator[np.ndarray]:
        return (_image_mask(file, limit(file), channel, invert, fit) for file in files)

    return MaskSource(path, video.frame_count, masks)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_boxes(path: Path, video: ClipInfo) -> dict[int, list[tuple[int, int, int, int]]]:
    """frame -> boxes as pixel slices (top, bottom, left, right), checked against the video."""
    document = read_json(path, "the box file")
    frames = document.get("frames") if isinstance(document, dict) else None
    if not isinstance(frames, dict):
        raise RemoverError(f'{path}: expected {{"frames": {{"<frame>": [[x0, y0, x1, y1], ...], ...}}}}')
    boxes: dict[int, list[tuple[int, int, int, int]]] = {}
    for key, frame_boxes in frames.items():
        if not key.isdigit():
            raise RemoverError(f"{path}: {key!r} is not a frame number")
        frame = int(key)
        if frame >= video.frame_count:
            raise RemoverError(f"{path}: frame {frame} does not exist (the video has {video.frame_count} frames)")
        if not isinstance(frame_boxes, list):
            raise RemoverError(f"{path}: frame {frame}: expected a list of boxes [x0, y0, x1, y1]")
        boxes[frame] = [_pixel_box(box, path, frame, video) for box in frame_boxes]
    return boxes


def _pixel_box(box: object, path: Path, frame: int, video: ClipInfo) -> tuple[int, int, int, int]:
    """A box [x0, y0, x1, y1] as the (top, bottom, left, right) of the pixels it touches in the frame."""
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        raise RemoverError(f"{path}: frame {frame}: {box!r} is not a box [x0, y0, x1, y1]")
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise RemoverError(f"{path}: frame {frame}: box {box} is empty (it needs x0 < x1 and y0 < y1)")
    if x1 <= 0 or y1 <= 0 or x0 >= video.width or y0 >= video.height:
        raise RemoverError(f"{path}: frame {frame}: box {box} lies outside the {video.width}x{video.height} frame")
    top, left = max(0, math.floor(y0)), max(0, math.floor(x0))
    return top, min(video.height, math.ceil(y1)), left, min(video.width, math.ceil(x1))


def _box_masks(path: Path, video: ClipInfo, invert: bool) -> MaskSource:
    boxes = _read_boxes(path, video)

    def masks() -> Iterator[np.ndarray]:
        for frame in range(video.frame_count):
            mask = np.full((video.height, video.width), invert)
            for top, bottom, left, right in boxes.get(frame, []):
                mask[top:bottom, left:right] = not invert
            yield mask

    return MaskSource(path, video.frame_count, masks)


def read_masks(path: str | Path, video: ClipInfo, **options: object) -> np.ndarray:
    """All the masks at once, bool [F, H, W]: a whole-clip convenience over `open_masks` (same options)."""
    return np.stack(list(open_masks(path, video, **options)))


def open_masks(
    path: str | Path, video: ClipInfo, *, threshold: int | None = None, invert: bool = False, channel: str = "auto"
) -> MaskSource:
    """The masks in `path` (a mask video, a folder of images, one image, or a .json box file) for the
    video described by `video`; see the module's docstring for the rules."""
    path = Path(path)
    if channel not in CHANNELS:
        raise RemoverError(f"unknown mask channel {channel!r}: use {', '.join(CHANNELS)}")
    if threshold is not None and not 0 <= threshold <= 254:
        raise RemoverError(f"mask threshold {threshold} is outside 0 to 254 (a pixel is masked above it)")
    if path.is_dir():
        return _image_masks(path, image_files(path), video, threshold, invert, channel)
    if not path.is_file():
        raise RemoverError(f"mask not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _box_masks(path, video, invert)
    if suffix in IMAGE_SUFFIXES:
        return _image_masks(path, [path], video, threshold, invert, channel)
    return _video_masks(path, video, threshold, invert, channel)
