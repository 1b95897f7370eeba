"""Quality of a removal against the true background, inside and outside the filled region.

All inputs are float arrays in [0, 1]: videos [F, H, W, 3], regions bool [F, H, W]. PSNR uses peak 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


def psnr(output: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """PSNR (dB) over the pixels of `region` (all three channels); inf where they match exactly."""
    error = float(np.square(output[region].astype(np.float64) - truth[region]).mean())
    return math.inf if error == 0.0 else -10.0 * math.log10(error)


def ssim_map(output: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM [F, H, W] (Gaussian window 11, sigma 1.5, averaged over channels, reflect-padded)."""
    x = torch.from_numpy(output).double().permute(0, 3, 1, 2).flatten(0, 1)[:, None]
    y = torch.from_numpy(truth).double().permute(0, 3, 1, 2).flatten(0, 1)[:, None]
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-coords.square() / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, [SSIM_WINDOW // 2] * 4, mode="reflect"), kernel)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x.square(), blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_x.square() + mu_y.square() + SSIM_C1) * (var_x + var_y + SSIM_C2)
    )
    return ssim[:, 0].unflatten(0, (len(output), 3)).mean(1).numpy()


def masked_ssim(output: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """Mean SSIM over the pixels of `region`."""
    return float(ssim_map(output, truth)[region].mean())


def temporal_psnr(output: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """Temporal consistency: PSNR (dB) of the output's frame-to-frame change against the true change,
    over the pixels in the region in either frame. Flicker or a fill that does not move with the
    background lowers it."""
    change = np.diff(output.astype(np.float64), axis=0)
    true_change = np.diff(truth.astype(np.float64), axis=0)
    either = region[1:] | region[:-1]
    error = float(np.square(change[either] - true_change[either]).mean())
    return math.inf if error == 0.0 else -10.0 * math.log10(error)
