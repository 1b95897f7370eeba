"""Quality of a removal against the true background, inside and outside the filled region: the PSNR and
SSIM of `runtime.evaluate.metrics` (what `python -m runtime.evaluate` reports), on training's float
videos, and a temporal PSNR built on the same PSNR.

All inputs are float arrays in [0, 1]: videos [F, H, W, 3], regions bool [F, H, W]. They are scaled to
runtime.evaluate's 0..255 (not rounded), so PSNR has peak 1 here. Figures pool every frame; an exact
region has no PSNR (None), as in runtime.evaluate, and SSIM counts the window centres in the region
(none within 5 pixels of the border).
"""

from __future__ import annotations

import numpy as np

from runtime.evaluate import metrics

PEAK = metrics.PEAK


def _psnr(difference: np.ndarray) -> float | None:
    """PSNR (dB) of differences on the [0, 1] scale, all values pooled; None when exact."""
    return metrics.psnr_db(PEAK**2 * float(np.square(difference, dtype=np.float64).sum()), difference.size)


def psnr(output: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float | None:
    """PSNR (dB) over the pixels of `region` (all three channels); None where they match exactly."""
    return _psnr(output[region].astype(np.float64) - truth[region])


def ssim_map(output: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """runtime.evaluate's SSIM per window centre of each frame: [F, H - 10, W - 10]."""
    return np.stack([metrics.ssim_map(o * PEAK, t * PEAK) for o, t in zip(output, truth)])


def masked_ssim(output: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float | None:
    """Mean SSIM over the window centres in `region`, all frames pooled; None when none is in it."""
    centres = np.stack([metrics.map_region(frame) for frame in region])
    if not centres.any():
        return None
    return float(ssim_map(output, truth)[centres].mean(dtype=np.float64))


def temporal_psnr(output: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float | None:
    """Temporal consistency: PSNR (dB) of the output's frame-to-frame change against the true change,
    over the pixels in the region in either frame; None where they match exactly. Flicker or a fill
    that does not move with the background lowers it."""
    change = np.diff(output.astype(np.float64), axis=0)
    true_change = np.diff(truth.astype(np.float64), axis=0)
    either = region[1:] | region[:-1]
    return _psnr(change[either] - true_change[either])
