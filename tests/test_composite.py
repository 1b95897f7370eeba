"""Paste-back computes only the rectangle with non-zero blend weights (runtime/pipeline/composite.py): its
result against the plain whole-frame computation (F.interpolate's antialiased bilinear, lerp), written
here as the oracle, and every pixel with a zero weight the input's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runtime.pipeline.box import Box
from runtime.pipeline.composite import Compositing, blend_weights, composite_window, resize_region
from runtime.pipeline.preprocess import dilate


def oracle_weights(dilated: torch.Tensor, radius: int, size: tuple[int, int]) -> torch.Tensor:
    """The ramp at the mask's size, resized bilinearly to `size`: [F, 1, H, W]."""
    return F.interpolate(blend_weights(dilated, radius)[:, None], size=size, mode="bilinear", align_corners=False)


def whole_frame_blend(frames: np.ndarray, generated: np.ndarray, dilated: torch.Tensor, radius: int) -> np.ndarray:
    """The oracle: every pixel blended, fp32 [F, H, W, 3] in [0, 255]."""
    alpha = oracle_weights(dilated, radius, frames.shape[1:3])
    fill = F.interpolate(
        torch.from_numpy(generated).permute(0, 3, 1, 2),
        size=frames.shape[1:3],
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    base = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    return torch.lerp(base, fill.clamp(0, 1) * 255, alpha).permute(0, 2, 3, 1).numpy()


def clip(frames: int, size: tuple[int, int], working: tuple[int, int], mask: tuple[int, int, int, int]):
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8)
    generated = rng.random((frames, *working, 3), dtype=np.float32) * 1.2 - 0.1  # the model may overshoot
    masks = torch.zeros(frames, *working, dtype=torch.bool)
    top, bottom, left, right = mask
    masks[:, top:bottom, left:right] = True
    masks[0] = False  # a frame with nothing to blend beside the others
    return pixels, generated, dilate(masks, 2)


@pytest.mark.parametrize(
    "working, size",
    [((32, 48), (135, 217)), ((32, 48), (32, 48)), ((40, 64), (30, 50))],
    ids=["upscale by an odd factor", "same size", "downscale"],
)
def test_a_region_resizes_as_the_whole_frame_does(working, size):
    pixels = torch.rand(3, *working, 3)
    whole = F.interpolate(pixels.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False, antialias=True)
    whole = whole.permute(0, 2, 3, 1)
    for rows, cols in [(slice(0, size[0]), slice(0, size[1])), (slice(5, 17), slice(size[1] - 9, size[1]))]:
        torch.testing.assert_close(resize_region(pixels, size, (rows, cols)), whole[:, rows, cols], rtol=0, atol=1e-5)


@pytest.mark.parametrize("crop", [False, True], ids=["whole frame", "box"])
def test_composite_matches_the_whole_frame_blend_and_keeps_every_unweighted_pixel(crop):
    frames, generated, dilated = clip(5, (90, 160), (16, 24), (3, 9, 4, 13))
    box = Box(top=10, left=20, bottom=80, right=140) if crop else Box(top=0, left=0, bottom=90, right=160)
    region = (slice(box.top, box.bottom), slice(box.left, box.right))
    out = np.stack(composite_window(list(frames), generated, dilated, box, 2))

    expected = frames.copy()
    expected[:, region[0], region[1]] = np.round(
        whole_frame_blend(frames[:, region[0], region[1]], generated, dilated, 2)
    )
    weighted = np.zeros(frames.shape[:3], bool)
    weighted[:, region[0], region[1]] = oracle_weights(dilated, 2, (box.height, box.width))[:, 0].numpy() > 0
    assert weighted[1:].any() and not weighted[0].any()
    assert np.array_equal(out[~weighted], frames[~weighted])  # bit for bit wherever the weight is 0
    difference = np.abs(out.astype(int) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, (difference.max(), (difference > 0).mean())


def test_paste_back_matches_the_whole_frame_blend():
    """The one-pass call's paste-back (`Compositing.paste` over the whole frame, feather 3)."""
    frames, generated, dilated = clip(4, (72, 120), (24, 40), (5, 15, 10, 30))
    out = np.stack(Compositing(feather=3).paste(list(frames), generated, dilated, Box(0, 0, 72, 120)))
    expected = whole_frame_blend(frames, generated, dilated, 3)
    assert np.abs(out - expected).max() <= 0.5 + 1e-3  # the blend, rounded to the nearest level
    unweighted = oracle_weights(dilated, 3, frames.shape[1:3])[:, 0].numpy() == 0
    assert np.array_equal(out[unweighted], frames[unweighted])
