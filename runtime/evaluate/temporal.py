"""Temporal figures of a clip: the flow-warping error inside the mask, and the seams at window boundaries.

Warping error (Lai et al. 2018, "Learning blind video temporal consistency", as mean absolute levels):
for each pair of consecutive frames, the optical flow from frame t to t + 1 of the same clip (OpenCV's
DIS, medium preset, on luma; no weights), frame t + 1 warped back onto frame t along it (bilinear), and
the mean absolute difference over the RGB values of the region (the dilated masks of both frames) where
the flow is trusted: the warped position lies inside the frame and the forward and backward flows agree
(Sundaram et al. 2010: |f + b|^2 < 0.01 (|f|^2 + |b|^2) + 0.5, else occluded). Pooled over all pairs.
A clip that moves only by its own motion scores near 0; flicker and jitter in the fill raise it. The same
figure for the reference (the truth, else the input) says what the footage itself scores there.

Seam ratio (how the window boundaries of a streamed run show): the mean absolute frame-to-frame change
inside the region at each transition (minus the true change where a truth is known), and each boundary
transition's change over the mean change of the other transitions at the same place of the VAE's
4-frame latent cycle (the change peaks every 4th frame whatever the windows do). 1: no seam.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import cv2
import numpy as np

from runtime.clips.plan import Window

LATENT_CYCLE = 4  # frames per latent frame of the Wan VAE (its temporal_factor)
_FLOW = cv2.DISOpticalFlow_PRESET_MEDIUM


def luma(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W] luma of an RGB image, for the flow."""
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


class FlowWarp:
    """Warping errors of consecutive frames of one clip (one DIS instance, reused)."""

    def __init__(self) -> None:
        self._flow = cv2.DISOpticalFlow_create(_FLOW)

    def error(self, current: np.ndarray, following: np.ndarray, region: np.ndarray) -> tuple[float, int]:
        """(summed absolute difference, values compared) of uint8 [H, W, 3] `current` against `following`
        warped back along the flow, over bool `region` [H, W] where the flow is trusted."""
        if not region.any():
            return 0.0, 0
        a, b = luma(current), luma(following)
        forward = self._flow.calc(a, b, None)
        backward = self._flow.calc(b, a, None)
        height, width = a.shape
        grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        map_x, map_y = grid_x + forward[..., 0], grid_y + forward[..., 1]
        warped = cv2.remap(following, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        back = cv2.remap(backward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
        agree = np.square(forward + back).sum(-1) < 0.01 * (np.square(forward).sum(-1) + np.square(back).sum(-1)) + 0.5
        trusted = region & inside & agree
        difference = np.abs(current[trusted].astype(np.float32) - warped[trusted].astype(np.float32))
        return float(difference.sum(dtype=np.float64)), difference.size


def transition_change(
    previous: np.ndarray,
    current: np.ndarray,
    region: np.ndarray,
    truth_previous: np.ndarray | None = None,
    truth_current: np.ndarray | None = None,
) -> float:
    """Mean absolute change from `previous` to `current` (uint8 [H, W, 3]) over bool `region` [H, W],
    minus the truth's own change where given; NaN for an empty region."""
    if not region.any():
        return float("nan")
    change = current[region].astype(np.float32) - previous[region].astype(np.float32)
    if truth_previous is not None and truth_current is not None:
        change -= truth_current[region].astype(np.float32) - truth_previous[region].astype(np.float32)
    return float(np.abs(change).mean())


def boundary_transitions(windows: Sequence[Window]) -> set[int]:
    """t such that frames t and t + 1 come from different windows' work (or a crossfade between them)."""
    found = set()
    for previous, window in zip(windows[:-1], windows[1:]):
        if window.known:
            found.add(window.start + window.known - 1)
        else:
            found.update(range(window.start - 1, previous.stop))
    return found


def seam_ratios(change: np.ndarray, seams: list[int], cycle: int = LATENT_CYCLE) -> np.ndarray:
    """Each boundary transition's change over the mean change of the other transitions at the same place
    of the `cycle`-frame latent cycle (1: no seam). `change` [F - 1] per transition."""
    rest = [t for t in range(len(change)) if t not in seams]
    same_phase = [np.nanmean(change[[u for u in rest if u % cycle == t % cycle]]) for t in seams]
    return change[seams] / np.array(same_phase)


def seam_ratio(change: np.ndarray, windows: Sequence[Window]) -> float | None:
    """The mean seam ratio of a run's windows over the per-transition `change`; None without boundaries
    (one window) or when no boundary has a comparable transition."""
    seams = sorted(boundary_transitions(windows))
    if not seams or len(seams) >= len(change):
        return None
    with warnings.catch_warnings():  # a phase with no other transition: NaN, left out
        warnings.simplefilter("ignore", RuntimeWarning)
        ratios = seam_ratios(change, seams)
    finite = ratios[np.isfinite(ratios)]
    return float(finite.mean()) if finite.size else None
