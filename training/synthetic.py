"""Synthetic clips with known ground truth: a textured, panning background with moving occluders.

Every clip is rendered twice, with and without the objects, so a removal can be scored against
the true background, and comes with the objects' exact masks. Everything follows from the seed.
Two generations of families: the first tiny model trained on "noise" (ellipses, rectangles) and was
evaluated on "waves" (triangles, blobs). The removing model trains on "soft" (smooth multi-scale colour
fields a small VAE can reconstruct, constant pans, straight object paths) and is evaluated on a set drawn
from another generator: "soft-waves" backgrounds (plane waves over a gradient), held-out shapes, and
"sway" motion (the camera's pan speeds up and slows down, objects follow curved paths).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TRAIN_SHAPES = ("ellipse", "rectangle")
HELD_OUT_SHAPES = ("triangle", "blob")


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


def wave_texture(
    rng: np.random.Generator, height: int, width: int, periods: tuple[float, float] = (10, 40), waves: int = 3
) -> np.ndarray:
    """Float [H, W, 3] in [0, 1]: `waves` random plane waves per channel, of `periods` px, over a colour
    gradient (periodic structure the training textures do not have)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = np.zeros((height, width, 3), dtype=np.float32)
    for channel in range(3):
        for _ in range(waves):
            angle, period, phase = rng.uniform(0, np.pi), rng.uniform(*periods), rng.uniform(0, 2 * np.pi)
            texture[..., channel] += np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period + phase)
    gradient = (xx / width)[..., None] * rng.uniform(-1, 1, 3) + (yy / height)[..., None] * rng.uniform(-1, 1, 3)
    texture = texture / waves + gradient.astype(np.float32)
    low, high = texture.min(), texture.max()
    return (texture - low) / max(high - low, 1e-6)


def soft_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float [H, W, 3] in [0, 1]: colour noise at coarse scales (12 to 48 px) plus one wide stripe
    pattern: detail a small VAE at stride 8 can keep, and that shows where the camera moved."""
    texture = smooth_texture(rng, height, width, scales=(12, 24, 48))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(20, 48)
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    texture = 0.7 * texture + 0.3 * stripes[..., None] * rng.random(3, dtype=np.float32)
    low, high = texture.min(), texture.max()
    return (texture - low) / max(high - low, 1e-6)


def soft_wave_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float [H, W, 3] in [0, 1]: two plane waves of 24 to 64 px per channel over a colour gradient
    (periodic structure the "soft" training family does not have)."""
    return wave_texture(rng, height, width, periods=(24, 64), waves=2)


BACKGROUNDS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "noise": smooth_texture,
    "waves": wave_texture,
    "soft": soft_texture,
    "soft-waves": soft_wave_texture,
}
MOTIONS = ("linear", "sway")


@dataclass(frozen=True)
class Family:
    """What a synthetic source draws: background texture, object shapes and texture scales, motion."""

    background: str
    shapes: tuple[str, ...]
    motion: str = "linear"
    object_scales: tuple[int, ...] = (2, 4)

    def render(
        self, seed: int, num_frames: int, height: int, width: int, num_objects: int = 1, frame_stride: int = 1
    ) -> SyntheticClip:
        """`render_clip` with this family's background, shapes, motion and object scales."""
        return render_clip(
            seed,
            num_frames,
            height,
            width,
            num_objects=num_objects,
            background=self.background,
            shapes=self.shapes,
            frame_stride=frame_stride,
            motion=self.motion,
            object_scales=self.object_scales,
        )


FAMILIES = {  # data source name -> family
    "synthetic": Family("noise", TRAIN_SHAPES),
    "synthetic-held-out": Family("waves", HELD_OUT_SHAPES),
    "synthetic-soft": Family("soft", TRAIN_SHAPES, "linear", (6, 12)),
    "synthetic-soft-held-out": Family("soft-waves", HELD_OUT_SHAPES, "sway", (6, 12)),
}


def object_mask(shape: str, height: int, width: int, center: np.ndarray, radii: np.ndarray, angle: float) -> np.ndarray:
    """bool [H, W] for an ellipse, rectangle, triangle or three-lobed blob rotated by `angle` around `center` (y, x)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = yy - center[0], xx - center[1]
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radii[1]
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / radii[0]
    if shape == "ellipse":
        return u**2 + v**2 <= 1.0
    if shape == "rectangle":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "triangle":  # apex at v = -1, base at v = 1/2
        return (v <= 0.5) & (np.sqrt(3.0) * np.abs(u) <= v + 1.0)
    if shape == "blob":
        return np.hypot(u, v) <= 0.8 + 0.25 * np.cos(3.0 * np.arctan2(v, u))
    raise ValueError(f"unknown shape {shape!r}")


def render_clip(
    seed: int,
    num_frames: int,
    height: int,
    width: int,
    num_objects: int = 1,
    background: str = "noise",
    shapes: tuple[str, ...] = TRAIN_SHAPES,
    frame_stride: int = 1,
    motion: str = "linear",
    object_scales: tuple[int, ...] = (2, 4),
) -> SyntheticClip:
    """Render one clip: the background pans, each object moves, turns and bounces.

    `motion` "linear": a constant pan and straight object paths; "sway": the pan's speed swings
    (a constant drift plus a sine of 1 to 3 px amplitude) and object paths curve.
    `frame_stride` keeps every stride-th frame of a longer rendering (faster apparent motion);
    `object_scales` are the objects' texture scales in px.
    """
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}")
    rng = np.random.default_rng(seed)
    rendered = (num_frames - 1) * frame_stride + 1
    pan = rng.uniform(-1.5, 1.5, size=2)  # pixels per frame (y, x)
    sway = rng.uniform(1.0, 3.0, size=2) if motion == "sway" else np.zeros(2)  # amplitude, px
    sway_period, turn = rng.uniform(8, 20), rng.uniform(-0.15, 0.15) if motion == "sway" else 0.0
    margin = np.ceil(np.abs(pan) * rendered + sway).astype(int) + 1
    canvas = BACKGROUNDS[background](rng, height + 2 * margin[0], width + 2 * margin[1])
    objects = []
    for _ in range(num_objects):
        radii = rng.uniform(0.12, 0.25, size=2) * min(height, width)
        objects.append(
            {
                "shape": rng.choice(list(shapes)),
                "texture": smooth_texture(rng, height, width, scales=object_scales) * 0.6
                + rng.random(3, dtype=np.float32) * 0.4,
                "radii": radii,
                "center": rng.uniform(radii.max(), [height - radii.max(), width - radii.max()]),
                "velocity": rng.uniform(-0.04, 0.04, size=2) * np.array([height, width]),
                "angle": rng.uniform(0, np.pi),
                "spin": rng.uniform(-0.08, 0.08),
            }
        )

    background_frames = np.empty((num_frames, height, width, 3), dtype=np.float32)
    with_objects = np.empty_like(background_frames)
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for t in range(rendered):
        keep, index = t % frame_stride == 0, t // frame_stride
        if keep:
            offset = pan * t + sway * np.sin(2 * np.pi * t / sway_period)
            top, left = (margin + np.round(offset)).astype(int)
            background_frames[index] = canvas[top : top + height, left : left + width]
            with_objects[index] = background_frames[index]
        for obj in objects:
            if keep:
                mask = object_mask(obj["shape"], height, width, obj["center"], obj["radii"], obj["angle"])
                with_objects[index][mask] = obj["texture"][mask]
                masks[index] |= mask
            obj["center"] = obj["center"] + obj["velocity"]
            if turn:  # a curved path: the velocity turns by `turn` radians a frame
                cos, sin = np.cos(turn), np.sin(turn)
                obj["velocity"] = np.array(
                    [
                        cos * obj["velocity"][0] - sin * obj["velocity"][1],
                        sin * obj["velocity"][0] + cos * obj["velocity"][1],
                    ]
                )
            for axis, size in enumerate((height, width)):  # bounce off the frame's edges
                if not obj["radii"].min() <= obj["center"][axis] <= size - obj["radii"].min():
                    obj["velocity"][axis] *= -1
            obj["angle"] += obj["spin"]
    return SyntheticClip(_to_uint8(with_objects), _to_uint8(background_frames), masks)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
