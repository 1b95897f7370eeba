"""Reading and writing clips: video files through PyAV, folders of images through Pillow.

Writers go to a temporary name beside the target and rename at the end, so an interrupted or
failed run never leaves a partial output behind.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime.errors import RemoverError

VIDEO_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
DEFAULT_FPS = Fraction(25)  # for clips given as image folders
VIDEO_MASK_THRESHOLD = 127  # lossy codecs leave faint noise in black areas, so video masks are > 127


@dataclass
class Clip:
    """Decoded frames uint8 [F, H, W, 3] and the frame rate to write the result at."""

    frames: np.ndarray
    fps: Fraction


def _natural_key(path: Path) -> list:
    """Sort frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder in natural order; none is an error."""
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not files:
        raise RemoverError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def _read_image(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except (OSError, UnidentifiedImageError) as exc:
        raise RemoverError(f"cannot read image {path}: {exc}") from None


def _read_images(files: list[Path], mode: str) -> np.ndarray:
    images = [_read_image(path, mode) for path in files]
    sizes = {image.shape for image in images}
    if len(sizes) > 1:
        raise RemoverError(f"images in {files[0].parent} have different sizes: {sorted(sizes)}")
    return np.stack(images)


def _decode_video(path: Path, pixel_format: str) -> tuple[np.ndarray, Fraction]:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise RemoverError(f"{path} has no video stream")
            stream = container.streams.video[0]
            frames = [frame.to_ndarray(format=pixel_format) for frame in container.decode(stream)]
            fps = Fraction(stream.average_rate) if stream.average_rate else DEFAULT_FPS
    except av.FFmpegError as exc:
        raise RemoverError(f"cannot read video {path}: {exc}") from None
    if not frames:
        raise RemoverError(f"{path} has no frames")
    return np.stack(frames), fps


def read_clip(path: str | Path) -> Clip:
    """Frames from a video file (mp4, mov, webm, mkv, ...), a folder of images or one image."""
    path = Path(path)
    if path.is_dir():
        return Clip(_read_images(image_files(path), "RGB"), DEFAULT_FPS)
    if not path.is_file():
        raise RemoverError(f"video not found: {path}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return Clip(_read_image(path, "RGB")[None], DEFAULT_FPS)
    return Clip(*_decode_video(path, "rgb24"))


def read_masks(path: str | Path) -> np.ndarray:
    """Masks as bool [F, H, W], or [H, W] for one image meant for every frame (True = remove).

    Images: any nonzero channel selects the pixel, as in the released pipeline. Videos: gray
    level above 127, because lossy coding leaves noise in the black areas.
    """
    path = Path(path)
    if path.is_dir():
        return _read_images(image_files(path), "RGB").max(axis=-1) > 0
    if not path.is_file():
        raise RemoverError(f"mask not found: {path}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _read_image(path, "RGB").max(axis=-1) > 0
    gray, _ = _decode_video(path, "gray")
    return gray > VIDEO_MASK_THRESHOLD


def check_output_path(path: str | Path, frame_size: tuple[int, int]) -> Path:
    """Fail before any work if the result could not be written there: a missing parent folder, an
    unknown suffix, a non-empty existing folder, or odd sizes for a yuv420p video."""
    path = Path(path)
    if not path.parent.is_dir():
        raise RemoverError(f"output folder {path.parent} does not exist")
    suffix = path.suffix.lower()
    if suffix in VIDEO_CODECS:
        height, width = frame_size
        if height % 2 or width % 2:
            raise RemoverError(
                f"{suffix} output needs an even width and height, got {width}x{height}; write PNGs to a folder instead"
            )
    elif suffix:
        raise RemoverError(
            f"unknown output type {suffix!r}: use {', '.join(VIDEO_CODECS)} or a folder name without a suffix"
        )
    elif path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RemoverError(f"output folder {path} exists and is not empty")
    return path


def write_clip(path: str | Path, frames: np.ndarray, fps: Fraction) -> None:
    """Write uint8 frames [F, H, W, 3] to a video file or a folder of PNGs, atomically."""
    path = check_output_path(path, frames.shape[1:3])
    if path.suffix:
        _write_video(path, frames, fps)
    else:
        _write_png_folder(path, frames)


def _temporary_name(path: Path) -> Path:
    """A hidden sibling of `path` (same suffix, so the muxer is still chosen by it)."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


def _write_video(path: Path, frames: np.ndarray, fps: Fraction) -> None:
    codec = VIDEO_CODECS[path.suffix.lower()]
    temp_name = str(_temporary_name(path))
    try:
        with av.open(temp_name, mode="w") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "17"} if codec == "libx264" else {"crf": "20", "b": "0"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _write_png_folder(path: Path, frames: np.ndarray) -> None:
    temp_dir = _temporary_name(path)
    temp_dir.mkdir()
    try:
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(temp_dir / f"{index:05d}.png")
        if path.exists():
            path.rmdir()  # checked empty above
        temp_dir.rename(path)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
