"""Reading clips lazily: a video file (PyAV), a folder of images or one image (Pillow).

`open_clip(path)` probes the input and returns a `ClipReader` whose `info` is known at once (opening a
video decodes its first frame: PyAV shows the colour tags and the display matrix only on frames).
Iterating the reader decodes one `Frame` at a time, 8-bit RGB in display orientation with the frame's
own timestamp; iterating it again starts a fresh decode from the first frame. `read_clip` gathers a
whole clip into one array, for training, benchmarks and tests.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

from runtime.errors import RemoverError, RemoverWarning
from runtime.io.color import SRGB, ColorInfo, frame_color, to_rgb
from runtime.io.images import IMAGE_SUFFIXES, image_files, probe_images, read_image

DEFAULT_FPS = Fraction(25)  # for clips given as images


@dataclass(frozen=True)
class StreamInfo:
    """A stream of a video file besides the one read: audio, subtitles, data, attachments."""

    index: int
    type: str  # "audio", "subtitle", "data", "attachment", "video"
    codec: str
    description: str  # e.g. "audio aac 48 kHz stereo"


@dataclass(frozen=True)
class ClipInfo:
    """What a clip holds, known when it is opened. Sizes are in display orientation: `rotation`
    (0, 90, 180, 270, counter-clockwise) and then a left-right mirror if `mirrored` turned the decoded
    frames upright. `time_base` is None for images, whose frames have no timestamps."""

    path: Path
    kind: str  # "video", "images" (a folder), "image", or "memory" (frames from an array: no file)
    width: int
    height: int
    frame_count: int
    fps: Fraction
    time_base: Fraction | None
    rotation: int
    color: ColorInfo
    streams: tuple[StreamInfo, ...] = ()
    mirrored: bool = False
    has_alpha: bool = False  # its frames carry an alpha channel (read by masks only: `open_clip(alpha=True)`)

    @property
    def coded_size(self) -> tuple[int, int]:
        """(width, height) as stored, before rotation."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)

    def describe(self) -> str:
        """One line, e.g. "1920x1080, 292 frames, 25 fps, bt709 tv range, audio aac 48 kHz stereo"."""
        parts = [f"{self.width}x{self.height}", f"{self.frame_count} frames", f"{float(self.fps):.4g} fps"]
        if self.rotation or self.mirrored:
            parts.append(f"rotated {self.rotation}" + (" and mirrored" if self.mirrored else ""))
        parts.append(self.color.describe())
        return ", ".join(parts + [stream.description for stream in self.streams])


@dataclass(frozen=True)
class Frame:
    """One decoded frame: uint8 [H, W, 3] RGB upright, and its timestamp in the clip's time base."""

    index: int
    image: np.ndarray
    pts: int | None


@dataclass
class Clip:
    """Decoded frames uint8 [F, H, W, 3], the frame rate to write the result at, and what the reader
    knew of the clip (for its masks: `read_masks(path, clip.info)`)."""

    frames: np.ndarray
    fps: Fraction
    info: ClipInfo


class ClipReader:
    """An opened clip: `info` at once, and a fresh decode, one frame at a time, on each iteration."""

    def __init__(self, info: ClipInfo, decode: Callable[[], Iterator[Frame]]) -> None:
        self.info = info
        self._decode = decode
        self._iterations: weakref.WeakSet = weakref.WeakSet()  # the decodes under way, to end on close
        self._closed = False

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise ValueError(f"the reader of {self.info.path} is closed")
        iteration = self._decode()
        self._iterations.add(iteration)
        return iteration

    def close(self) -> None:
        """End the decodes under way (their files close); the reader cannot be iterated again."""
        self._closed = True
        for iteration in list(self._iterations):
            iteration.close()

    def __enter__(self) -> ClipReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def orient(image: np.ndarray, rotation: int, mirrored: bool) -> np.ndarray:
    """An image [H, W, ...] rotated `rotation` degrees counter-clockwise, then mirrored left-right."""
    upright = np.rot90(image, rotation // 90)
    return np.ascontiguousarray(upright[:, ::-1] if mirrored else upright)


def _fraction(rational: object) -> Fraction | None:
    """A PyAV rational (Fraction, or AVRational in later PyAV) as a Fraction; None when unset."""
    return Fraction(rational.numerator, rational.denominator) if rational else None


def _display_orientation(frame: av.VideoFrame) -> tuple[int, bool]:
    """(rotation counter-clockwise in multiples of 90, mirrored) from the frame's display matrix."""
    side_data = frame.side_data.get(SideDataType.DISPLAYMATRIX)
    if side_data is None:
        return 0, False
    a, b, _, c, d = (int(value) for value in np.frombuffer(bytes(side_data), np.int32)[:5])
    mirrored = a * d - b * c < 0
    if mirrored:  # FFmpeg mirrors by negating the first column; undo that to read the rotation
        a, c = -a, -c
    degrees = -math.degrees(math.atan2(b, a))  # as av_display_rotation_get: counter-clockwise
    return round(degrees / 90) % 4 * 90, mirrored


def _stream_info(stream: av.stream.Stream) -> StreamInfo:
    codec = stream.codec_context.name if stream.codec_context is not None else (stream.name or "unknown")
    description = f"{stream.type} {codec}"
    if stream.type == "audio":
        context = stream.codec_context
        description += f" {context.sample_rate / 1000:g} kHz {context.layout.name}"
    language = stream.metadata.get("language", "und")
    if language != "und":
        description += f" ({language})"
    return StreamInfo(stream.index, stream.type, codec, description)


def _count_packets(path: Path, stream_index: int) -> int:
    """The frames of a video stream, counted by demuxing without decoding."""
    with av.open(str(path)) as container:
        stream = container.streams[stream_index]
        return sum(1 for packet in container.demux(stream) if packet.size and not packet.is_discard)


def _probe_video(path: Path) -> ClipInfo:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise RemoverError(f"{path} has no video stream")
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            if first is None:
                raise RemoverError(f"{path} has no frames")
            rotation, mirrored = _display_orientation(first)
            upright = rotation in (90, 270)
            return ClipInfo(
                path=path,
                kind="video",
                width=first.height if upright else first.width,
                height=first.width if upright else first.height,
                frame_count=stream.frames or _count_packets(path, stream.index),
                fps=_fraction(stream.average_rate) or _fraction(stream.guessed_rate) or DEFAULT_FPS,
                time_base=_fraction(stream.time_base),
                rotation=rotation,
                color=frame_color(first),
                streams=tuple(_stream_info(s) for s in container.streams if s.index != stream.index),
                mirrored=mirrored,
                has_alpha=_format_has_alpha(first.format),
            )
    except av.FFmpegError as exc:
        raise RemoverError(f"cannot read video {path}: {exc}") from None


def _format_has_alpha(pixel_format: av.VideoFormat) -> bool:
    """A pixel format with an alpha component (rgba, argb, yuva420p, gbrap, ya8, ...)."""
    return len(pixel_format.components) in (2, 4)


def _with_alpha(frame: av.VideoFrame, rgb: np.ndarray) -> np.ndarray:
    """RGB [H, W, 3] with the frame's own alpha added as a 4th channel when it has one."""
    if not _format_has_alpha(frame.format):
        return rgb
    return np.concatenate([rgb, frame.reformat(format="rgba").to_ndarray()[..., 3:]], axis=-1)


def _decode_video(info: ClipInfo, alpha: bool = False) -> Iterator[Frame]:
    count = 0
    try:
        with av.open(str(info.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                image = to_rgb(frame, info.color)
                if alpha:
                    image = _with_alpha(frame, image)
                yield Frame(count, orient(image, info.rotation, info.mirrored), frame.pts)
                count += 1
    except av.FFmpegError as exc:
        raise RemoverError(f"cannot decode {info.path} after frame {count}: {exc}") from None
    if count != info.frame_count:
        warnings.warn(
            f"{info.path} decoded to {count} frames, not the {info.frame_count} its container states",
            RemoverWarning,
            stacklevel=2,
        )


def _probe_images(path: Path, files: list[Path]) -> ClipInfo:
    header = probe_images(files, path)
    kind = "images" if path.is_dir() else "image"
    color = replace(SRGB, bit_depth=header.bit_depth)
    return ClipInfo(path, kind, header.width, header.height, len(files), DEFAULT_FPS, None, 0, color)


def _decode_images(files: list[Path]) -> Iterator[Frame]:
    for index, file in enumerate(files):
        yield Frame(index, np.ascontiguousarray(read_image(file)[..., :3]), None)


def open_clip(path: str | Path, *, alpha: bool = False) -> ClipReader:
    """A video file (mp4, mov, mkv, webm, ...), a folder of images (natural order) or one image, opened
    for lazy reading. Input of more than 8 bits, and HDR, is read as 8-bit RGB with a warning. `alpha`
    (for mask videos): a video whose frames carry alpha gives RGBA [H, W, 4] frames."""
    path = Path(path)
    if path.is_dir():
        files = image_files(path)
        info = _probe_images(path, files)
        decode = partial(_decode_images, files)
    elif not path.is_file():
        raise RemoverError(f"video not found: {path}")
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        info = _probe_images(path, [path])
        decode = partial(_decode_images, [path])
    else:
        info = _probe_video(path)
        decode = partial(_decode_video, info, alpha)
    if info.color.bit_depth > 8:
        warnings.warn(
            f"{path.name} has {info.color.bit_depth}-bit colour; it is processed and written as 8-bit",
            RemoverWarning,
            stacklevel=2,
        )
    if info.color.hdr:
        warnings.warn(
            f"{path.name} is HDR ({info.color.describe()}); it is processed as 8-bit without tone "
            "mapping and written 8-bit with the same HDR tags",
            RemoverWarning,
            stacklevel=2,
        )
    return ClipReader(info, decode)


def read_clip(path: str | Path) -> Clip:
    """A whole clip in memory: frames uint8 [F, H, W, 3] and the frame rate (see `open_clip`)."""
    with open_clip(path) as reader:
        return Clip(np.stack([frame.image for frame in reader]), reader.info.fps, reader.info)
