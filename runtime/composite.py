"""Paste-back: generated pixels go into the original frames only through the dilated mask.

The blend weight is 1 deep inside the dilated mask, ramps down over the last few pixels before its
edge (inside only), and is exactly 0 outside, so every pixel outside the dilated mask is the input
value, bit for bit. The ramp never reaches the object itself as long as it is no wider than the
dilation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from runtime.preprocess import FRAMES_PER_CHUNK, dilate

FEATHER_PX = 3  # width of the blend ramp, in mask pixels, capped by the dilation


def blend_weights(dilated: Tensor, radius: int) -> Tensor:
    """fp32 weights [F, H, W] from bool masks: the mean of `radius` successive 4-connected erosions."""
    weights = torch.zeros(dilated.shape, device=dilated.device)
    inside = dilated
    for _ in range(radius):
        weights += inside
        inside = ~dilate(~inside, 1)  # erosion; outside the frame counts as inside the mask
    return weights / radius


def paste_back(frames: np.ndarray, generated: np.ndarray, dilated: Tensor, mask_dilation: int) -> np.ndarray:
    """Composite generated [F, h, w, 3] (fp32, [0, 1]) into frames [F, H, W, 3] (uint8) -> fp32 [F, H, W, 3].

    `dilated` [F, hm, wm] is the dilated mask at the mask's resolution, on the device to work on.
    """
    device = dilated.device
    height, width = frames.shape[1:3]
    radius = max(1, min(FEATHER_PX, mask_dilation))
    out = np.empty(frames.shape, dtype=np.float32)
    for start in range(0, len(frames), FRAMES_PER_CHUNK):
        stop = min(start + FRAMES_PER_CHUNK, len(frames))
        alpha = blend_weights(dilated[start:stop], radius)[:, None]
        if alpha.shape[-2:] != (height, width):
            alpha = F.interpolate(alpha, size=(height, width), mode="bilinear", align_corners=False)
        generated_chunk = torch.from_numpy(generated[start:stop]).to(device).permute(0, 3, 1, 2)
        if generated_chunk.shape[-2:] != (height, width):
            generated_chunk = F.interpolate(
                generated_chunk, size=(height, width), mode="bilinear", align_corners=False, antialias=True
            ).clamp(0.0, 1.0)
        original = torch.from_numpy(frames[start:stop]).to(device).permute(0, 3, 1, 2).float() / 255.0
        # lerp returns `original` exactly where alpha is 0
        out[start:stop] = torch.lerp(original, generated_chunk, alpha).permute(0, 2, 3, 1).cpu().numpy()
    return out
