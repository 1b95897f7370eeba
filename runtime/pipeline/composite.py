"""Paste-back: generated pixels go into the original frames only through the dilated mask.

The blend weight is 1 deep inside the dilated mask, ramps down over the last few pixels before its
edge (inside only), and is exactly 0 outside, so every pixel outside the dilated mask is the input
value, bit for bit. The ramp never reaches the object itself as long as it is no wider than the
dilation. The weights are computed where the mask was dilated and resized bilinearly to the frame,
so the ramp widens with the frame's resolution; with a crop, only the box is touched.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from runtime.pipeline.box import Box
from runtime.pipeline.preprocess import chunk_frames, dilate

FEATHER_PX = 3  # width of the blend ramp, in mask pixels, capped by the dilation (the one-pass API)


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


def blend(original: np.ndarray, generated: np.ndarray, dilated: Tensor, radius: int) -> Tensor:
    """original uint8 [c, H, W, 3], generated fp32 [c, h, w, 3] in [0, 1], dilated bool [c, hm, wm] on
    the device to work on -> fp32 [c, H, W, 3] in [0, 255], exactly `original` where the weight is 0."""
    device = dilated.device
    height, width = original.shape[1:3]
    alpha = blend_weights(dilated, radius)[:, None]
    if alpha.shape[-2:] != (height, width):
        alpha = F.interpolate(alpha, size=(height, width), mode="bilinear", align_corners=False)
    fill = torch.from_numpy(generated).to(device).permute(0, 3, 1, 2)
    if fill.shape[-2:] != (height, width):
        fill = F.interpolate(fill, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    fill = fill.clamp(0.0, 1.0) * 255.0
    base = torch.from_numpy(original).to(device).permute(0, 3, 1, 2).float()
    return torch.lerp(base, fill, alpha).permute(0, 2, 3, 1)  # lerp returns `base` exactly where alpha is 0


def paste_back(frames: np.ndarray, generated: np.ndarray, dilated: Tensor, mask_dilation: int) -> np.ndarray:
    """Composite generated [F, h, w, 3] (fp32, [0, 1]) into frames [F, H, W, 3] (uint8) -> fp32 [F, H, W, 3].

    `dilated` [F, hm, wm] is the dilated mask at the mask's resolution, on the device to work on.
    """
    radius = max(1, min(FEATHER_PX, mask_dilation))
    out = np.empty(frames.shape, dtype=np.float32)
    step = chunk_frames(*frames.shape[1:3])
    for start in range(0, len(frames), step):
        stop = start + step
        out[start:stop] = (blend(frames[start:stop], generated[start:stop], dilated[start:stop], radius) / 255.0).cpu()
    return out


def composite_window(
    frames: list[np.ndarray], generated: np.ndarray, dilated: Tensor, box: Box, feather: int
) -> list[np.ndarray]:
    """New uint8 frames [H, W, 3]: each of `frames` with generated [F, h, w, 3] (fp32, [0, 1], the
    working size) blended into `box` through the dilated working-size masks [F, h, w] (bool, on the
    device to work on) with a ramp of `feather` working pixels. Pixels outside the box are copied."""
    region = (slice(box.top, box.bottom), slice(box.left, box.right))
    out = []
    step = chunk_frames(box.height, box.width)
    for start in range(0, len(frames), step):
        chunk = frames[start : start + step]
        crops = np.stack([frame[region] for frame in chunk])
        stop = start + len(chunk)
        blended = blend(crops, generated[start:stop], dilated[start:stop], feather)
        pixels = blended.round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        for frame, pasted in zip(chunk, pixels):
            composed = frame.copy()
            composed[region] = pasted
            out.append(composed)
    return out
