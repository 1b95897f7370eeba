"""Image files through Pillow: folders in natural order, sizes from the header alone, and pixels as
8-bit arrays whatever the file's depth (16-bit PNG and TIFF are scaled, not clipped). Masks read the
values at the file's own depth (`read_levels`), so a label 1 of 65535 is not lost to the scaling."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime.errors import RemoverError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
JPEG_SUFFIXES = {".jpg", ".jpeg"}
WIDE_GRAY_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # more than 8 bits of gray; Pillow clips these to 8


def _natural_key(path: Path) -> list:
    """Sort frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder in natural order; none is an error."""
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not files:
        raise RemoverError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError) as exc:
        raise RemoverError(f"cannot read image {path}: {exc}") from None


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says: size, bits per channel, and whether it has an alpha channel."""

    width: int
    height: int
    bit_depth: int
    has_alpha: bool


def image_header(path: Path) -> ImageHeader:
    """The header of one image file, read without decoding the pixels."""
    with _open(path) as image:
        return ImageHeader(image.width, image.height, 16 if _is_wide(image) else 8, _has_alpha(image))


def _is_wide(image: Image.Image) -> bool:
    """More than 8 bits per channel in the file: a wide gray mode, or a decoder raw mode like "RGB;16B"
    (a tile's 4th field, alone or first of a tuple), which Pillow cuts to the high byte."""
    rawmodes = [str(tile[3][0] if isinstance(tile[3], tuple) else tile[3]) for tile in image.tile]
    return image.mode in WIDE_GRAY_MODES or any(";16" in rawmode for rawmode in rawmodes)


def probe_images(files: list[Path], where: Path) -> ImageHeader:
    """The common header of a list of image files (the deepest bit depth, alpha if all have it); files
    of different sizes are an error naming `where`."""
    headers = [image_header(file) for file in files]
    first_of_size: dict[tuple[int, int], Path] = {}
    for file, header in zip(files, headers):
        first_of_size.setdefault((header.width, header.height), file)
    if len(first_of_size) > 1:
        listed = ", ".join(f"{w}x{h} ({file.name})" for (w, h), file in first_of_size.items())
        raise RemoverError(f"images in {where} have different sizes: {listed}")
    bit_depth = max(header.bit_depth for header in headers)
    return ImageHeader(headers[0].width, headers[0].height, bit_depth, all(header.has_alpha for header in headers))


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info


def read_image(path: Path) -> np.ndarray:
    """The pixels as uint8 [H, W, 3] RGB, or [H, W, 4] RGBA when the file has an alpha channel. Wider
    pixels are scaled by their range, never cut: 16-bit by 65535 (to the high byte), float (32-bit
    TIFF) from 0 to 1; a float image outside 0 to 1, or 32-bit integers past 65535, is refused."""
    try:
        with _open(path) as image:
            if image.mode == "F":
                gray = np.round(_unit_floats(np.asarray(image), path) * 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=-1)
            if image.mode in WIDE_GRAY_MODES:
                values = np.asarray(image)
                if values.size and (values.min() < 0 or values.max() > 65535):
                    raise RemoverError(
                        f"{path} holds 32-bit values ({values.min()} to {values.max()}) outside the 16-bit range "
                        "0 to 65535: save the frames as 8- or 16-bit"
                    )
                gray = (values.astype(np.uint32) >> 8).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=-1)
            return np.asarray(image.convert("RGBA" if _has_alpha(image) else "RGB"))
    except OSError as exc:  # a header that opens over pixels that do not decode
        raise RemoverError(f"cannot read image {path}: {exc}") from None


def read_levels(path: Path) -> tuple[np.ndarray, int]:
    """The pixel values at the file's own depth, for masks, where any nonzero value counts: uint8 or
    uint16 [H, W, 3], or [H, W, 4] with alpha, and the full-scale value (255 or 65535). 16-bit colour
    (which Pillow cuts to its high byte) is decoded by FFmpeg. A palette image's indices past the end of
    its palette (which Pillow reads as black) read as full scale, except index 0 (a label map's background).
    A float image (32-bit TIFF) is taken as 0 to 1, any value above 0 reading as at least 1 of 65535."""
    try:
        with _open(path) as image:
            if image.mode in WIDE_GRAY_MODES:
                gray = np.asarray(image).clip(0, 65535).astype(np.uint16)
                return np.repeat(gray[..., None], 3, axis=-1), 65535
            if image.mode == "P":
                return _palette_levels(image), 255
            if image.mode == "F":
                return _float_levels(np.asarray(image), path), 65535
            if not _is_wide(image):
                return np.asarray(image.convert("RGBA" if _has_alpha(image) else "RGB")), 255
            alpha = _has_alpha(image)
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            return frame.to_ndarray(format="rgba64le" if alpha else "rgb48le"), 65535
    except (OSError, StopIteration) as exc:  # a header that opens over pixels that do not decode
        raise RemoverError(f"cannot read image {path}: {exc}") from None


def _palette_levels(image: Image.Image) -> np.ndarray:
    """RGB(A) of a palette image through its own palette, with indices it lacks at 255 (0 stays 0)."""
    palette = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)[:256]
    table = np.full((256, 3), 255, np.uint8)
    table[0] = 0
    table[: len(palette)] = palette
    colours = table[np.asarray(image)]
    if not _has_alpha(image):
        return colours
    return np.concatenate([colours, np.asarray(image.convert("RGBA"))[..., 3:]], axis=-1)


def _unit_floats(values: np.ndarray, path: Path) -> np.ndarray:
    """A float frame's values, which must lie from 0 to 1 (the range float images are taken in)."""
    if not np.isfinite(values).all():
        raise RemoverError(f"{path} holds NaN or infinite values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low < 0 or high > 1:
        raise RemoverError(
            f"{path} is a float image with values from {low:.4g} to {high:.4g}: float frames must lie from 0 to 1 "
            "(or save them as 8- or 16-bit)"
        )
    return values


def _float_levels(values: np.ndarray, path: Path) -> np.ndarray:
    """Gray float pixels (0 to 1; larger values count as full) as uint16 RGB, rounded up so that no
    value above 0 becomes 0; NaN or infinite values are an error."""
    if not np.isfinite(values).all():
        raise RemoverError(f"the mask {path} holds NaN or infinite values")
    levels = np.ceil(np.clip(values, 0.0, 1.0) * 65535).astype(np.uint16)
    return np.repeat(levels[..., None], 3, axis=-1)
