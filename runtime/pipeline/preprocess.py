"""Input handling: the checks, the working size, frame padding and the resize and dilation primitives
that runtime/pipeline/composite.py puts together (as the released pipeline does, or antialiased).

Frame counts that are not 4k+1 are padded by repeating the last frame (the caller trims back).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from runtime.errors import RemoverError
from runtime.io.masks import ASPECT_TOLERANCE
from runtime.models.config import SIZE_MULTIPLE

DEFAULT_SHORT_SIDE = 480
LONG_SIDE_MULTIPLE = 32  # 16:9 -> 832x480, the Wan2.1 480p size
CHUNK_PIXELS = 8 * 480 * 832  # pixels converted at once (38 MB of fp32 RGB), bounding full-resolution floats


def chunk_frames(height: int, width: int) -> int:
    """How many frames of this size to convert at once: CHUNK_PIXELS worth, at least one."""
    return max(1, CHUNK_PIXELS // (height * width))


def _stacked(items: Sequence | None, what: str, convert: str) -> np.ndarray:
    """A list of PIL images or arrays as one array; an empty list, None or different sizes are errors."""
    if items is None or isinstance(items, (str, bytes)):
        raise RemoverError(f"{what} must be an array or a list of images, got {type(items).__name__}")
    arrays = [np.asarray(item.convert(convert) if hasattr(item, "convert") else item) for item in items]
    if not arrays:
        raise RemoverError(f"no {what}")
    shapes = {array.shape for array in arrays}
    if len(shapes) > 1:
        odd = next(i for i, array in enumerate(arrays) if array.shape != arrays[0].shape)
        raise RemoverError(
            f"{what} differ in shape: {list(arrays[0].shape)} first, {list(arrays[odd].shape)} at {odd}; "
            "give one size for every frame"
        )
    return np.stack(arrays)


def _with_positive_strides(array: np.ndarray) -> np.ndarray:
    """A view with negative strides (`frames[:, ::-1]`, a flip) copied, since torch cannot take it."""
    return array.copy() if any(stride < 0 for stride in array.strides) else array


def as_frames(frames: np.ndarray | Sequence) -> np.ndarray:
    """Frames as a uint8 array [F, H, W, 3]; a list of PIL images or arrays of one size is stacked."""
    if not isinstance(frames, np.ndarray):
        frames = _stacked(frames, "frames", "RGB")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise RemoverError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    if len(frames) == 0:
        raise RemoverError("no frames")
    return _with_positive_strides(frames)


def as_masks(masks: np.ndarray | Sequence, frames: np.ndarray) -> np.ndarray:
    """Masks as a bool array [F, h, w] (nonzero = remove), checked against the frames.

    One mask [h, w] serves every frame. A mask of another size than the frames is accepted when its
    aspect ratio is the same (it is resized, as the released pipeline resizes masks on their own).
    """
    if not isinstance(masks, np.ndarray):
        masks = _stacked(masks, "masks", "L")
    if masks.dtype.kind not in "biuf":
        raise RemoverError(f"masks must be bool, integer or float arrays, got {masks.dtype}")
    if masks.dtype.kind == "f" and not np.isfinite(masks).all():
        raise RemoverError("masks hold NaN or infinite values: give 0 for keep and nonzero (1) for remove")
    if masks.ndim == 2:
        masks = np.broadcast_to(masks, (len(frames), *masks.shape))
    if masks.ndim != 3:
        raise RemoverError(f"masks must be [F, H, W] or [H, W], got shape {list(masks.shape)}")
    if len(masks) != len(frames):
        raise RemoverError(f"got {len(masks)} masks for {len(frames)} frames")
    (mask_h, mask_w), (frame_h, frame_w) = masks.shape[1:], frames.shape[1:3]
    if (mask_h, mask_w) != (frame_h, frame_w) and abs(mask_w / mask_h - frame_w / frame_h) > ASPECT_TOLERANCE * (
        frame_w / frame_h
    ):
        raise RemoverError(f"mask size {mask_w}x{mask_h} does not match the video's {frame_w}x{frame_h}")
    return masks != 0


def output_size(frame_h: int, frame_w: int, height: int | None, width: int | None) -> tuple[int, int]:
    """The model's working size. Default: the short side 480 and the long side 480 x aspect rounded
    down to a multiple of 32 (16:9 -> 832x480, 4:3 -> 640x480). Giving one side derives the other
    (nearest multiple of 16). Both must be positive multiples of 16."""
    aspect = frame_w / frame_h
    if height is None and width is None:
        if frame_w >= frame_h:
            height = DEFAULT_SHORT_SIDE
            width = max(
                LONG_SIDE_MULTIPLE, math.floor(DEFAULT_SHORT_SIDE * aspect / LONG_SIDE_MULTIPLE) * LONG_SIDE_MULTIPLE
            )
        else:
            width = DEFAULT_SHORT_SIDE
            height = max(
                LONG_SIDE_MULTIPLE, math.floor(DEFAULT_SHORT_SIDE / aspect / LONG_SIDE_MULTIPLE) * LONG_SIDE_MULTIPLE
            )
    elif height is None:
        height = max(SIZE_MULTIPLE, round(width / aspect / SIZE_MULTIPLE) * SIZE_MULTIPLE)
    elif width is None:
        width = max(SIZE_MULTIPLE, round(height * aspect / SIZE_MULTIPLE) * SIZE_MULTIPLE)
    if height <= 0 or width <= 0 or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise RemoverError(f"height and width must be positive multiples of {SIZE_MULTIPLE}, got {width}x{height}")
    return height, width


def padded_frame_count(num_frames: int, temporal_factor: int = 4) -> int:
    """The smallest k * temporal_factor + 1 >= num_frames."""
    return 1 + math.ceil((num_frames - 1) / temporal_factor) * temporal_factor


def pad_frames(array: np.ndarray, count: int) -> np.ndarray:
    """Repeat the last frame of `array` [F, ...] until it has `count` frames."""
    if count == len(array):
        return array
    return np.concatenate([array, np.repeat(array[-1:], count - len(array), axis=0)])


def dilate(masks: Tensor, iterations: int) -> Tensor:
    """Binary dilation [F, H, W] with the 3x3 cross, `iterations` times (scipy's binary_dilation)."""
    m = masks.float()[:, None]
    for _ in range(iterations):
        # the cross is the union of a 1x3 and a 3x1 window
        m = torch.maximum(F.max_pool2d(m, (1, 3), 1, (0, 1)), F.max_pool2d(m, (3, 1), 1, (1, 0)))
    return m[:, 0] > 0


def resize(x: Tensor, size: tuple[int, int], antialias: bool = False) -> Tensor:
    """Bilinear resize of [N, C, H, W] (align_corners False); without `antialias`, as the reference."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def prepare_video(frames: np.ndarray, size: tuple[int, int], device: torch.device, antialias: bool = False) -> Tensor:
    """uint8 [F, H, W, 3] -> fp32 [3, F, height, width] in [-1, 1] on `device`."""
    out = torch.empty(3, len(frames), *size, device=device)
    step = chunk_frames(*frames.shape[1:3])
    for start in range(0, len(frames), step):
        chunk = torch.from_numpy(frames[start : start + step]).to(device)
        scaled = chunk.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out[:, start : start + len(chunk)] = resize(scaled, size, antialias).transpose(0, 1)
    return out


def prepare_masks(
    masks: np.ndarray, iterations: int, size: tuple[int, int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """bool [F, h, w] -> (dilated masks at their own resolution [F, h, w] bool, fp32 {0, 1} [F, height, width])."""
    dilated = torch.empty(masks.shape, dtype=torch.bool, device=device)
    resized = torch.empty(len(masks), *size, device=device)
    step = chunk_frames(*masks.shape[1:3])
    for start in range(0, len(masks), step):
        chunk = dilate(torch.from_numpy(np.ascontiguousarray(masks[start : start + step])).to(device), iterations)
        dilated[start : start + len(chunk)] = chunk
        resized[start : start + len(chunk)] = (resize(chunk.float()[:, None], size)[:, 0] > 0).float()
    return dilated, resized


def resize_frames(frames: np.ndarray, size: tuple[int, int], device: torch.device, antialias: bool) -> np.ndarray:
    """uint8 [F, H, W, 3] -> uint8 [F, height, width, 3], bilinear (antialiased when shrinking, if asked)."""
    if frames.shape[1:3] == size:
        return frames
    out = np.empty((len(frames), *size, 3), dtype=np.uint8)
    step = chunk_frames(*frames.shape[1:3])
    for start in range(0, len(frames), step):
        chunk = torch.from_numpy(frames[start : start + step]).to(device).permute(0, 3, 1, 2).float()
        resized = resize(chunk, size, antialias)
        out[start : start + len(chunk)] = resized.round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
    return out


def shrink_masks(masks: np.ndarray, size: tuple[int, int], device: torch.device) -> np.ndarray:
    """bool [F, H, W] -> bool [F, height, width], a pixel set wherever any pixel of its footprint is
    (area averaging, > 0), so a thin mask survives any downscale."""
    if masks.shape[1:] == size:
        return masks
    out = np.empty((len(masks), *size), dtype=bool)
    step = chunk_frames(*masks.shape[1:3])
    for start in range(0, len(masks), step):
        chunk = torch.from_numpy(np.ascontiguousarray(masks[start : start + step])).to(device)
        resized = F.interpolate(chunk.float()[:, None], size=size, mode="area")
        out[start : start + len(chunk)] = (resized[:, 0] > 0).cpu().numpy()
    return out
