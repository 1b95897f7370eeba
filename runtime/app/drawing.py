"""What the page draws on a preview frame: the mask tinted (one colour per object), the clicks and boxes
of the prompts, and the crop boxes of the plan. Coordinates given here are preview pixels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from PIL import Image, ImageDraw

OBJECT_COLOURS = ((255, 64, 64), (64, 160, 255), (255, 200, 0), (64, 220, 120), (220, 90, 255), (255, 128, 0))
MASK_COLOUR = (255, 0, 0)  # a mask from a file: which object a pixel belongs to is not known
PLAN_COLOUR = (0, 255, 0)
POSITIVE, NEGATIVE = (0, 230, 0), (255, 40, 40)


def object_colour(object_id: int) -> tuple[int, int, int]:
    return OBJECT_COLOURS[(object_id - 1) % len(OBJECT_COLOURS)]


def tint(image: np.ndarray, masks: Mapping[int, np.ndarray] | np.ndarray | None, alpha: float = 0.5) -> np.ndarray:
    """`image` with each object's mask blended in its colour (a bare array: the file mask's colour)."""
    if masks is None:
        return image
    if isinstance(masks, np.ndarray):
        masks = {0: masks}
    out = image.astype(np.float32)
    for object_id, mask in masks.items():
        colour = np.array(MASK_COLOUR if object_id == 0 else object_colour(object_id), dtype=np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out.round().astype(np.uint8)


def draw_prompts(image: np.ndarray, prompts: Iterable[tuple[int, str, tuple[float, ...]]]) -> np.ndarray:
    """(object_id, kind, coords) prompts: points as dots (green positive, red negative) ringed in the
    object's colour and white, boxes as rectangles in the object's colour."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    radius = max(4, round(max(image.shape[:2]) / 90))
    for object_id, kind, coords in prompts:
        colour = object_colour(object_id)
        if kind == "box":
            draw.rectangle(coords, outline=colour, width=max(2, radius // 2))
            continue
        x, y = coords
        fill = NEGATIVE if kind == "negative" else POSITIVE
        ring = radius + 2
        draw.ellipse((x - ring, y - ring, x + ring, y + ring), fill=(255, 255, 255))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill, outline=colour, width=2)
    return np.asarray(picture)


def draw_boxes(image: np.ndarray, boxes: Iterable[tuple[float, float, float, float]]) -> np.ndarray:
    """(left, top, right, bottom) boxes outlined in the plan's colour."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    for box in boxes:
        draw.rectangle(box, outline=PLAN_COLOUR, width=2)
    return np.asarray(picture)
