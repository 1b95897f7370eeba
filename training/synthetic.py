"""Synthetic clips with known ground truth: a textured, panning background with moving occluders.

Every clip is rendered twice, with and without the objects, so a removal can be scored against
the true background, and comes with the objects' exact masks. Everything follows from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class SyntheticClip:
    """uint8 [F, H, W, 3] frames with and without the objects, and bool [F, H, W] object masks."""

    with_objects: np.ndarray
    background: np.ndarray
    masks: np.ndarray


def smooth_texture(
    rng: np.random.Generator, height: int, width: int, scales: tuple[int, ...] = (4, 8, 16)
) -> np.ndarray:
    """Float [H, W, 3] in [0, 1]: random colour noise at a few scales, bilinearly upsampled, plus stripes."""
    texture = np.zeros((height, width, 3), dtype=np.float32)
    for scale in scales:
        coarse = torch.from_numpy(rng.random((1, 3, max(2, height // scale), max(2, width // scale)), dtype=np.float32))
        texture += (
            F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
            .permute(1, 2, 0)
            .numpy()
        )
    texture /= len(scales)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    texture = 0.75 * texture + 0.25 * stripes[..., None] * rng.random(3, dtype=np.float32)
    low, high = texture.min(), texture.max()
    return (texture - low) / max(high - low, 1e-6)


def object_mask(shape: str, height: int, width: int, center: np.ndarray, radii: np.ndarray, angle: float) -> np.ndarray:
    """bool [H, W] for an ellipse or a rectangle rotated by `angle` around `center` (y, x)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = yy - center[0], xx - center[1]
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radii[1]
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / radii[0]
    if shape == "ellipse":
        return u**2 + v**2 <= 1.0
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)


def render_clip(seed: int, num_frames: int, height: int, width: int, num_objects: int = 1) -> SyntheticClip:
    """Render one clip: the background pans at a constant velocity, each object moves, turns and bounces."""
    rng = np.random.default_rng(seed)
    pan = rng.uniform(-1.5, 1.5, size=2)  # pixels per frame (y, x)
    margin = np.ceil(np.abs(pan) * num_frames).astype(int) + 1
    canvas = smooth_texture(rng, height + 2 * margin[0], width + 2 * margin[1])
    objects = []
    for _ in range(num_objects):
        radii = rng.uniform(0.12, 0.25, size=2) * min(height, width)
        objects.append(
            {
                "shape": rng.choice(["ellipse", "rectangle"]),
                "texture": smooth_texture(rng, height, width, scales=(2, 4)) * 0.6
                + rng.random(3, dtype=np.float32) * 0.4,
                "radii": radii,
                "center": rng.uniform(radii.max(), [height - radii.max(), width - radii.max()]),
                "velocity": rng.uniform(-0.04, 0.04, size=2) * np.array([height, width]),
                "angle": rng.uniform(0, np.pi),
                "spin": rng.uniform(-0.08, 0.08),
            }
        )

    background = np.empty((num_frames, height, width, 3), dtype=np.float32)
    with_objects = np.empty_like(background)
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for t in range(num_frames):
        top, left = (margin + np.round(pan * t)).astype(int)
        background[t] = canvas[top : top + height, left : left + width]
        with_objects[t] = background[t]
        for obj in objects:
            mask = object_mask(obj["shape"], height, width, obj["center"], obj["radii"], obj["angle"])
            with_objects[t][mask] = obj["texture"][mask]
            masks[t] |= mask
            obj["center"] = obj["center"] + obj["velocity"]
            for axis, size in enumerate((height, width)):  # bounce off the frame's edges
                if not obj["radii"].min() <= obj["center"][axis] <= size - obj["radii"].min():
                    obj["velocity"][axis] *= -1
            obj["angle"] += obj["spin"]
    return SyntheticClip(_to_uint8(with_objects), _to_uint8(background), masks)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
