"""`--preview`: the input with the plan drawn on it, without running the model.

Each frame shows its mask tinted red, the box of every window that holds the frame (outlined in the
window's colour; in an overlap both), and a label with the frame number and its window(s); a
window's first frame says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from runtime.clips.job import Job, OutputOptions
from runtime.io import open_writer
from runtime.pipeline.composite import pixel_unit

WINDOW_COLOURS = ((64, 220, 64), (64, 200, 255), (255, 200, 0), (230, 90, 255))
MASK_TINT = np.array([255, 0, 0], dtype=np.float32)


def draw_frame(image: np.ndarray, mask: np.ndarray, index: int, job: Job) -> np.ndarray:
    """One preview frame (uint8 [H, W, 3]) for frame `index` with mask bool [H, W]."""
    tinted = image.astype(np.float32)
    tinted[mask] = 0.5 * tinted[mask] + 0.5 * MASK_TINT
    picture = Image.fromarray(tinted.round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    line = max(1, round(2 * pixel_unit(job.plan.frame_size)))
    labels = [f"frame {index}"]
    for window in job.plan.windows:
        if not window.start <= index < window.stop:
            continue
        colour = WINDOW_COLOURS[window.index % len(WINDOW_COLOURS)]
        if window.box is not None:
            box = window.box
            draw.rectangle((box.left, box.top, box.right - 1, box.bottom - 1), outline=colour, width=line)
        state = "starts" if index == window.start else ("known" if index < window.start + window.known else "")
        labels.append(f"window {window.index + 1}/{len(job.plan.windows)} {state}".rstrip())
    text = ", ".join(labels)
    left, top, right, bottom = draw.textbbox((line, line), text)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text((line, line), text, fill=(255, 255, 255))
    return np.asarray(picture)


def write_preview(job: Job, out: str | Path, output: OutputOptions | None = None, progress: bool = True) -> None:
    """Write the preview of `job` to `out` (any output the writer takes), frame by frame."""
    frames = zip(job.frames(), job.mask_frames())
    with open_writer(out, job.video.info, **(output or OutputOptions()).writer_arguments()) as writer:
        for index, ((image, pts), mask) in enumerate(
            tqdm(frames, total=job.plan.frame_count, desc="preview", unit="frame", disable=not progress)
        ):
            writer.write(draw_frame(image, mask, index, job), pts)
