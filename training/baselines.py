"""Classical baselines for the evaluation: per-frame OpenCV inpainting (Telea) and a temporal median fill.

Both take uint8 frames [F, H, W, 3] and bool regions [F, H, W] (the pixels to fill) and return float
frames in [0, 1]; pixels outside the region are the input's.
"""

from __future__ import annotations

import numpy as np


def telea(frames: np.ndarray, region: np.ndarray, radius: int = 5) -> np.ndarray:
    """Each frame inpainted on its own by OpenCV's fast marching method (Telea 2004)."""
    import cv2  # the `train` extra

    filled = [
        cv2.inpaint(frame, mask.astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)
        for frame, mask in zip(frames, region)
    ]
    return np.stack(filled).astype(np.float32) / 255.0


def temporal_median(frames: np.ndarray, region: np.ndarray, radius: int = 5) -> np.ndarray:
    """Each filled pixel takes the median of its colour over the frames where it is not covered;
    pixels covered in every frame fall back to Telea. Ignores camera motion, as a baseline should."""
    visible = np.where(region[..., None], np.nan, frames.astype(np.float32))
    never_visible = region.all(axis=0)
    median = np.nanmedian(visible[:, ~never_visible], axis=0)  # [pixels, 3]
    out = frames.astype(np.float32)
    fallback = telea(frames, region, radius) * 255.0
    for t in range(len(frames)):
        fill = np.empty(frames.shape[1:], dtype=np.float32)
        fill[~never_visible] = median
        fill[never_visible] = fallback[t][never_visible]
        out[t][region[t]] = fill[region[t]]
    return out / 255.0
