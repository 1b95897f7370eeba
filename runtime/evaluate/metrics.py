"""Per-frame image figures, accumulated over a region of a clip: PSNR, SSIM and the largest difference.

PSNR is 10 log10(255^2 / MSE) over every channel of every pixel of the region, all frames pooled (the
squared errors are summed, not the per-frame PSNRs averaged); an exact region has no PSNR (None, `null`
in JSON), never infinity or a capped number. SSIM is Wang et al. 2004 with the standard Gaussian window
(sigma 1.5, 11x11, the constants K1 0.01, K2 0.03 at a data range of 255), computed per RGB channel and
averaged over the channels, as scikit-image's `structural_similarity(..., channel_axis=-1,
gaussian_weights=True, use_sample_covariance=False, data_range=255)`. Its map is the windows that fit
in the frame (a 5-pixel border has none, as scikit-image crops it); a region's SSIM is the mean of the
map over the window centres in the region, all frames pooled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

PEAK = 255.0
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): scipy's truncation, as scikit-image filters
SSIM_C1 = (0.01 * PEAK) ** 2
SSIM_C2 = (0.03 * PEAK) ** 2


def psnr_db(squared_error: float, values: int) -> float | None:
    """PSNR of a summed squared error over `values` 8-bit values; None when exact (or nothing compared)."""
    if values == 0 or squared_error == 0:
        return None
    return 10 * math.log10(PEAK**2 * values / squared_error)


def _filter(x: np.ndarray) -> np.ndarray:
    """The Gaussian-weighted mean of each window that fits in [H, W, C]: [H - 10, W - 10, C]."""
    window = cv2.getGaussianKernel(2 * SSIM_RADIUS + 1, SSIM_SIGMA, cv2.CV_64F)
    filtered = cv2.sepFilter2D(x, -1, window, window, borderType=cv2.BORDER_REFLECT)
    return filtered[SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS]


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of uint8 [H, W, 3] images per window centre, the mean over channels: float32 [H - 10, W - 10]
    whose element (i, j) is the window centred on pixel (i + 5, j + 5). In float32 about levels centred
    on 128, which keeps the variances' cancellation error near 1e-8 of SSIM (0.3 s for a 1080p frame)."""
    x, y = a.astype(np.float32) - 128, b.astype(np.float32) - 128
    mx, my = _filter(x), _filter(y)
    vx, vy, cxy = _filter(x * x) - mx * mx, _filter(y * y) - my * my, _filter(x * y) - mx * my
    mx += 128
    my += 128
    s = ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))
    return s.mean(axis=-1)


def map_region(region: np.ndarray) -> np.ndarray:
    """A bool [H, W] region as the window centres of `ssim_map` [H - 10, W - 10]."""
    return region[SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS]


@dataclass
class RegionFigures:
    """Running sums over one region of every frame: squared error, SSIM, the largest difference."""

    squared_error: float = 0.0
    values: int = 0
    ssim_sum: float = 0.0
    ssim_centres: int = 0
    max_abs: int = 0
    exact_frames: int = 0

    def add(self, a: np.ndarray, b: np.ndarray, region: np.ndarray, ssim: np.ndarray) -> dict[str, float | None]:
        """Add one frame pair (uint8 [H, W, 3]) over bool `region` [H, W] with its `ssim_map`; returns the
        frame's own figures (psnr_db, ssim, max_abs)."""
        difference = np.abs(a[region].astype(np.int16) - b[region].astype(np.int16))
        squared = float(np.square(difference, dtype=np.int64).sum())
        centres = map_region(region)
        ssim_sum, count = float(ssim[centres].sum(dtype=np.float64)), int(centres.sum())
        largest = int(difference.max(initial=0))
        self.squared_error += squared
        self.values += difference.size
        self.ssim_sum += ssim_sum
        self.ssim_centres += count
        self.max_abs = max(self.max_abs, largest)
        self.exact_frames += largest == 0
        return {
            "psnr_db": psnr_db(squared, difference.size),
            "ssim": ssim_sum / count if count else None,
            "max_abs": largest,
        }

    @property
    def psnr_db(self) -> float | None:
        return psnr_db(self.squared_error, self.values)

    @property
    def ssim(self) -> float | None:
        return self.ssim_sum / self.ssim_centres if self.ssim_centres else None
