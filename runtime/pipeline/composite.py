"""The compositor: how a window's frames and masks become the model's inputs (resize, dilation) and how
its generation goes back into the frames (feathered paste-back), for every front door alike.

`Compositing.resize` picks the resize: "reference" (the released pipeline: frames bilinear without
antialias; masks dilated at their own resolution, then resized) or "antialias" (frames antialiased
when shrinking; masks shrunk by area, then dilated at the working size). The generated pixels go back
only through the dilated mask: the blend weight is 1 deep inside it, ramps down over its last
`feather` pixels (inside only) and is exactly 0 outside, so every pixel outside the dilated mask is
the input, bit for bit. The weights are made where the mask was dilated and resized bilinearly to the
frame; only the rectangle that holds a non-zero weight is computed (what that saves: bench/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from runtime.errors import RemoverError
from runtime.pipeline.box import Box
from runtime.pipeline.preprocess import chunk_frames, dilate, pad_frames, prepare_masks, prepare_video, shrink_masks

RESIZE_MODES = ("reference", "antialias")
DEFAULT_RESIZE = "reference"  # the released pipeline's way: raw generation matches it
DEFAULT_DILATION = 6  # pixels at 480p: the released demos' setting
DEFAULT_FEATHER = 3  # pixels at 480p
REFERENCE_SHORT_SIDE = 480  # dilation and feather are given in pixels at this short side


def pixel_unit(frame_size: tuple[int, int]) -> float:
    """Native pixels per pixel at 480p, for frames larger than 480p (1 for smaller ones, where the
    given pixels apply as they are, as in the released pipeline): dilation and feather scale with it."""
    return max(1.0, min(frame_size) / REFERENCE_SHORT_SIDE)


@dataclass(frozen=True)
class Compositing:
    """How one window is resized, dilated and feathered. `dilation` and `feather` are in the pixels of
    the resolution the masks are dilated at: the masks' own ("reference") or the working size
    ("antialias")."""

    resize: str = DEFAULT_RESIZE
    dilation: int = DEFAULT_DILATION
    feather: int = DEFAULT_FEATHER

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise RemoverError(f"--resize {self.resize}: choose one of {', '.join(RESIZE_MODES)}")
        if self.dilation < 0 or self.feather < 1:
            raise RemoverError(f"mask dilation must be >= 0 and feather >= 1, got {self.dilation} and {self.feather}")

    @classmethod
    def scaled(
        cls, resize: str, frame_size: tuple[int, int], scale: float, dilation: float, feather: float
    ) -> Compositing:
        """From `dilation` and `feather` in pixels at 480p, for frames of `frame_size` brought to the
        working size by `scale` (working / native pixels); the feather never exceeds the dilation."""
        unit = pixel_unit(frame_size) * (scale if resize == "antialias" else 1.0)
        pixels = round(dilation * unit)
        return cls(resize, pixels, min(max(1, round(feather * unit)), max(1, pixels)))

    def model_inputs(
        self, frames: np.ndarray, masks: np.ndarray, size: tuple[int, int], count: int, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor]:
        """frames uint8 [F, H, W, 3] and masks bool [F, hm, wm] (padded to `count` frames here) ->
        (video fp32 [3, count, height, width] in [-1, 1], mask fp32 {0, 1} [count, height, width],
        the dilated masks bool [F, ...] at the resolution they were dilated at, for `paste`)."""
        padded = pad_frames(masks, count)
        video = prepare_video(pad_frames(frames, count), size, device, antialias=self.resize == "antialias")
        if self.resize == "reference":
            dilated, mask = prepare_masks(padded, self.dilation, size, device)
        else:
            dilated = dilate(torch.from_numpy(shrink_masks(padded, size, device)).to(device), self.dilation)
            mask = dilated.float()
        return video, mask, dilated[: len(frames)]

    def paste(self, frames: list[np.ndarray], generated: np.ndarray, dilated: Tensor, box: Box) -> list[np.ndarray]:
        """`composite_window` with this feather."""
        return composite_window(frames, generated, dilated, box, self.feather)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """fp32 pixels in [0, 1] (any shape) as uint8, rounded to the nearest level."""
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def blend_weights(dilated: Tensor, radius: int) -> Tensor:
    """fp32 weights [F, H, W] from bool masks: the mean of `radius` successive 4-connected erosions."""
    weights = torch.zeros(dilated.shape, device=dilated.device)
    inside = dilated
    for _ in range(radius):
        weights += inside
        inside = ~dilate(~inside, 1)  # erosion; outside the frame counts as inside the mask
    return weights / radius


def frame_weights(dilated: Tensor, radius: int, size: tuple[int, int]) -> Tensor:
    """Blend weights [F, 1, H, W] at the frame's size `size`, from bool masks [F, hm, wm] on the device."""
    alpha = blend_weights(dilated, radius)[:, None]
    if alpha.shape[-2:] != size:
        alpha = F.interpolate(alpha, size=size, mode="bilinear", align_corners=False)
    return alpha


def weighted_region(alpha: Tensor) -> tuple[slice, slice] | None:
    """The rows and columns [top:bottom, left:right] that hold every non-zero weight of `alpha` [F, 1, H, W]
    (None when there is none): outside them the result is the input, so nothing there is computed."""
    weighted = alpha.amax(dim=(0, 1)) > 0  # [H, W]: the one pass over all the weights
    rows = torch.nonzero(weighted.any(dim=1))
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(weighted.any(dim=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _bilinear_taps(source: int, target: int, span: slice, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """For target pixels `span` of an upscale from `source` to `target` pixels (half-pixel centres, as
    F.interpolate's bilinear with align_corners=False): each one's two source indices and the weight of
    the second."""
    position = (torch.arange(span.start, span.stop, device=device, dtype=torch.float64) + 0.5) * (source / target)
    position = (position - 0.5).clamp(min=0.0)
    first = position.floor().long().clamp(max=source - 1)
    return first, (first + 1).clamp(max=source - 1), (position - first).float()


def resize_region(pixels: Tensor, size: tuple[int, int], region: tuple[slice, slice]) -> Tensor:
    """`region` of pixels [F, h, w, C] resized to `size`, as [F, rows, cols, C]. An upscale computes only
    the region's pixels (within 1e-5 of F.interpolate's antialiased bilinear, which equals plain
    bilinear when upscaling); a downscale resizes the whole and cuts the region out."""
    (height, width), (rows, cols) = size, region
    if pixels.shape[1] > height or pixels.shape[2] > width:
        whole = F.interpolate(
            pixels.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False, antialias=True
        )
        return whole.permute(0, 2, 3, 1)[:, rows, cols]
    top, bottom, below = _bilinear_taps(pixels.shape[1], height, rows, pixels.device)
    pixels = torch.lerp(pixels[:, top], pixels[:, bottom], below[None, :, None, None])
    left, right, beside = _bilinear_taps(pixels.shape[2], width, cols, pixels.device)
    return torch.lerp(pixels[:, :, left], pixels[:, :, right], beside[None, None, :, None])


def blend(original: np.ndarray, generated: np.ndarray, alpha: Tensor, region: tuple[slice, slice]) -> Tensor:
    """The blended `region` of the frames: original uint8 [c, rows, cols, 3] (the frames cut to the region),
    generated fp32 [c, h, w, 3] in [0, 1] for the whole frame, weights alpha [c, 1, H, W] on the device to
    work on -> fp32 [c, rows, cols, 3] in [0, 255], exactly `original` where the weight is 0."""
    rows, cols = region
    fill = resize_region(torch.from_numpy(generated).to(alpha.device), alpha.shape[-2:], region)
    fill = fill.clamp(0.0, 1.0) * 255.0
    base = torch.from_numpy(original).to(alpha.device).float()
    return torch.lerp(base, fill, alpha[:, 0, rows, cols, None])  # lerp returns `base` exactly where alpha is 0


def composite_window(
    frames: list[np.ndarray], generated: np.ndarray, dilated: Tensor, box: Box, feather: int
) -> list[np.ndarray]:
    """New uint8 frames [H, W, 3]: each of `frames` with generated [F, h, w, 3] (fp32, [0, 1], the
    working size) blended into `box` through the dilated working-size masks [F, h, w] (bool, on the
    device to work on) with a ramp of `feather` working pixels. Pixels where the ramp is 0 are copied."""
    out = []
    step = chunk_frames(box.height, box.width)
    for start in range(0, len(frames), step):
        chunk = frames[start : start + step]
        stop = start + len(chunk)
        alpha = frame_weights(dilated[start:stop], feather, (box.height, box.width))
        region = weighted_region(alpha)
        if region is None:
            out.extend(frame.copy() for frame in chunk)
            continue
        rows, cols = region
        target = (slice(box.top + rows.start, box.top + rows.stop), slice(box.left + cols.start, box.left + cols.stop))
        originals = np.stack([frame[target] for frame in chunk])
        blended = blend(originals, generated[start:stop], alpha, region)
        pixels = blended.round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        for frame, pasted in zip(chunk, pixels):
            composed = frame.copy()
            composed[target] = pasted
            out.append(composed)
    return out
