"""Writing clips frame by frame as they are finished: a video file (.mp4, .mov, .mkv, .webm), a folder
of PNGs (a path without a suffix), or one image file (a one-frame clip).

`check_output` makes every check before any work (the output is not an input, its temporary name can
be created, what dead runs left of it is removed); `open_writer` returns a `ClipWriter` that writes
under a temporary name beside the target and puts it in place when it is committed (a clean exit
from its `with` block), never over an output that appeared meanwhile unless overwriting; an error,
Ctrl-C or a full disk removes everything it wrote (runtime.io.outputs).

Video outputs, from the source's `ClipInfo`:
- colour: RGB -> YUV with the source's matrix and range, tagged with the source's matrix, range,
  primaries and transfer (the reader's assumption when the source was untagged: BT.709 for HD,
  BT.601 below); image sources become BT.709 limited range. Always 8 bits (HDR keeps its tags).
- timestamps: each frame keeps the pts it is given, in the source's time base, so a variable frame
  rate survives; the stream's rate is the source's fps. Image sources: pts = frame index at the fps.
- the source's other streams (audio, subtitles, ...) are demuxed again from the source file as the
  frames come and muxed beside them in timestamp order, packet for packet where the container holds
  the codec; audio it cannot hold is re-encoded (aac for mp4/mov, opus for webm/mkv), anything else
  is dropped; both with a warning.
- orientation: frames arrive upright (the reader applied the rotation) and are written upright,
  with no rotation tag.
- odd sizes: H.264 and H.265 need even sizes for 4:2:0, so they switch to 4:4:4 there (some players,
  browsers among them, need 4:2:0 and even sizes: a warning says so).
- `lossless`: RGB stored exactly (libx264rgb at qp 0, VP9 lossless RGB, or FFV1), so the frames read
  back are the frames written, bit for bit.
"""

from __future__ import annotations

import os
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.container import OutputContainer
from PIL import Image

from runtime.errors import RemoverError, RemoverWarning
from runtime.io.color import SRGB, from_rgb, output_color, tag
from runtime.io.images import IMAGE_SUFFIXES, JPEG_SUFFIXES
from runtime.io.outputs import (
    claim_output,
    probe_writable,
    publish,
    release_dead_claim,
    remove_path,
    remove_stale_partials,
    temporary_name,
    write_error,
)
from runtime.io.paths import check_not_input
from runtime.io.reader import ClipInfo, StreamInfo


@dataclass(frozen=True)
class Encoding:
    """How video frames are encoded: the FFmpeg encoder, its pixel format and options."""

    encoder: str
    pixel_format: str
    options: dict[str, str] = field(default_factory=dict)
    even_420: bool = False  # 4:2:0 needs an even width and height: 4:4:4 at odd sizes
    codec_tag: str | None = None  # in mp4 and mov


@dataclass(frozen=True)
class Codec:
    """A `codec` choice: its encoding, its `crf` (lowest, highest, default; None: no crf), and its
    lossless encoding if it has one."""

    encoding: Encoding
    crf: tuple[int, int, int] | None = None
    lossless: Encoding | None = None


FFV1 = Encoding("ffv1", "bgr0")  # always lossless RGB
CODECS = {
    "h264": Codec(
        Encoding("libx264", "yuv420p", even_420=True), (0, 51, 17), Encoding("libx264rgb", "rgb24", {"qp": "0"})
    ),
    "h265": Codec(
        Encoding("libx265", "yuv420p", {"x265-params": "log-level=error"}, even_420=True, codec_tag="hvc1"),
        (0, 51, 20),
    ),
    "vp9": Codec(
        Encoding("libvpx-vp9", "yuv420p", {"b": "0", "row-mt": "1"}),
        (0, 63, 20),
        Encoding("libvpx-vp9", "gbrp", {"lossless": "1"}),
    ),
    "av1": Codec(Encoding("libsvtav1", "yuv420p"), (1, 63, 30)),
    "ffv1": Codec(FFV1, lossless=FFV1),
    "prores": Codec(Encoding("prores_ks", "yuv422p10le")),
}
CONTAINER_CODECS = {  # what each container takes here, its default first
    ".mp4": ("h264", "h265", "vp9", "av1"),
    ".mov": ("h264", "h265", "prores"),
    ".mkv": ("h264", "h265", "vp9", "av1", "ffv1", "prores"),
    ".webm": ("vp9", "av1"),
}
AUDIO_FALLBACK = {".mp4": "aac", ".mov": "aac", ".mkv": "libopus", ".webm": "libopus"}
IMAGE_SAVE_OPTIONS = {".jpg": {"quality": 95}, ".jpeg": {"quality": 95}, ".webp": {"quality": 95}}
FRAME_NAME = re.compile(r"\d+\.png")  # what a PNG folder output holds


def _video_encoding(suffix: str, codec: str | None, crf: int | None, lossless: bool) -> Encoding:
    """The encoding of a `codec` (default: the container's) in a `suffix` container; errors name the choices."""
    allowed = CONTAINER_CODECS[suffix]
    name = codec or allowed[0]
    if name not in CODECS:
        raise RemoverError(f"unknown codec {name!r}: use one of {', '.join(CODECS)}")
    if name not in allowed:
        raise RemoverError(f"a {suffix} file cannot hold {name}: use {', '.join(allowed)}")
    choice = CODECS[name]
    if lossless:
        if crf is not None:
            raise RemoverError("--crf and --lossless exclude each other")
        if choice.lossless is None:
            choices = [n for n in allowed if CODECS[n].lossless is not None]
            raise RemoverError(f"{name} has no lossless mode here: use --codec {' or '.join(choices)}")
        encoding = choice.lossless
    elif choice.crf is None:
        if crf is not None:
            raise RemoverError(f"{name} takes no --crf")
        encoding = choice.encoding
    else:
        lowest, highest, default = choice.crf
        if crf is not None and not lowest <= crf <= highest:
            raise RemoverError(f"--crf {crf} is outside {lowest} to {highest} for {name}")
        quality = {"crf": str(default if crf is None else crf)}
        encoding = replace(choice.encoding, options={**choice.encoding.options, **quality})
    if encoding.encoder not in av.codecs_available:
        raise RemoverError(f"this PyAV build has no {encoding.encoder} encoder (needed for {name})")
    return encoding


def output_kind(path: Path) -> str:
    """The output's kind from its suffix: "video", "folder" (PNGs) or "image"; another suffix is an error."""
    suffix = path.suffix.lower()
    if suffix in CONTAINER_CODECS:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if not suffix:
        return "folder"
    raise RemoverError(
        f"unknown output type {suffix!r}: use {', '.join(CONTAINER_CODECS)}, an image file for one frame, "
        "or a folder name without a suffix"
    )


def _check_target(path: Path, kind: str, overwrite: bool) -> None:
    """An existing output is replaced only with `overwrite`, and a folder only when it holds nothing but
    frames this writer makes (an empty folder is simply filled)."""
    if not path.exists():
        return
    if (kind == "folder") != path.is_dir():
        raise RemoverError(f"{path} exists and is {'not ' if kind == 'folder' else ''}a folder")
    if kind == "folder" and not any(path.iterdir()):
        return
    if not overwrite:
        raise RemoverError(f"{path} exists; pass --overwrite to replace it")
    if kind == "folder" and not all(FRAME_NAME.fullmatch(entry.name) for entry in path.iterdir()):
        raise RemoverError(f"output folder {path} holds other files than numbered PNG frames; not replacing it")


@dataclass(frozen=True)
class _Options:
    """The writer arguments of `check_output` and `open_writer`."""

    overwrite: bool = False
    codec: str | None = None
    crf: int | None = None
    lossless: bool = False
    inputs: tuple[Path, ...] = ()


def _plan(path: Path, source: ClipInfo, options: _Options) -> tuple[str, Encoding | None]:
    """(kind, video encoding or None) for writing `source`'s frames to `path`, after every check."""
    overwrite, codec, crf, lossless = options.overwrite, options.codec, options.crf, options.lossless
    if not path.parent.is_dir():
        raise RemoverError(f"output folder {path.parent} does not exist")
    kind = output_kind(path)
    check_not_input(path, (*options.inputs, *([source.path] if source.kind != "memory" else [])))
    _check_target(path, kind, overwrite)
    if kind == "video":
        return kind, _video_encoding(path.suffix.lower(), codec, crf, lossless)
    if codec is not None or crf is not None:
        raise RemoverError("--codec and --crf apply to video outputs")
    if kind == "image" and source.frame_count != 1:
        raise RemoverError(
            f"{path.name} holds one image and the clip has {source.frame_count} frames: write a video or a folder"
        )
    if lossless and path.suffix.lower() in JPEG_SUFFIXES:
        raise RemoverError("JPEG is lossy: use .png for --lossless")
    return kind, None


def check_output(
    path: str | Path,
    source: ClipInfo,
    *,
    overwrite: bool = False,
    codec: str | None = None,
    crf: int | None = None,
    lossless: bool = False,
    inputs: Iterable[str | Path] = (),
) -> None:
    """Fail before any work if `source`'s frames could not be written to `path` with these options: a
    missing parent folder, an unknown suffix, `path` being (or inside, or holding) `source.path` or one
    of `inputs` (the mask) whatever its spelling, an existing output without `overwrite`, a folder
    holding other files, one image for several frames, a codec the container cannot hold, a crf out of
    range, a folder where the output cannot be created (its temporary name is made and removed).
    What writers of `path` that died left beside it is removed."""
    path = Path(path)
    options = _Options(overwrite, codec, crf, lossless, tuple(Path(p) for p in inputs))
    kind, _ = _plan(path, source, options)
    remove_stale_partials(path)
    probe_writable(path, folder=kind == "folder")


def remove_partial_output(path: str | Path, pid: int) -> None:
    """Remove what a writer in process `pid`, killed before it finished, left of the output `path`:
    its temporary output and its claim."""
    remove_path(temporary_name(Path(path), pid=pid))
    release_dead_claim(path, pid)


class ClipWriter(ABC):
    """Takes finished frames one at a time (`write`) under a temporary name; `commit` renames the result
    onto the target, `abort` removes it. As a context manager: commit on a clean exit, abort on any
    exception (Ctrl-C included). The target is claimed (`claim_output`) from the start to the end."""

    def __init__(self, target: Path, overwrite: bool) -> None:
        self.target = target
        self._overwrite = overwrite
        self._temporary = temporary_name(target)
        self._claim = claim_output(target)
        self._claim.__enter__()
        try:
            self._open()
        except BaseException:
            self.abort()
            raise
        self._shape: tuple[int, ...] | None = None
        self.frames_written = 0

    def write(self, image: np.ndarray, pts: int | None = None) -> None:
        """Add a frame: uint8 [H, W, 3] RGB, upright; `pts` in the source's time base (video outputs)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"frames must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        if self._shape is not None and image.shape != self._shape:
            raise ValueError(f"frame {self.frames_written} is {list(image.shape)}, the first was {list(self._shape)}")
        self._shape = image.shape
        try:
            self._write(np.ascontiguousarray(image), pts)
        except OSError as exc:  # a full disk, a folder gone: nothing half-written stays
            self.abort()
            raise write_error(self.target, exc) from None
        self.frames_written += 1

    def commit(self) -> None:
        """Finish the file(s) and put them in place of the target: replacing an existing one only
        with `overwrite`, never one that appeared while writing (another run's) otherwise."""
        try:
            if not self.frames_written:
                raise RemoverError(f"no frames to write to {self.target}")
            self._finish()
            publish(self._temporary, self.target, self._overwrite)
            self._release()
        except OSError as exc:
            self.abort()
            raise write_error(self.target, exc) from None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Remove everything written, also when closing the files fails (a full disk fails again on close)."""
        try:
            self._close()
        except Exception:  # noqa: BLE001 - the files go either way
            pass
        finally:
            remove_path(self._temporary)
            self._release()

    def _release(self) -> None:
        """End the claim on the target (once)."""
        claim, self._claim = self._claim, None
        if claim is not None:
            claim.__exit__(None, None, None)

    def __enter__(self) -> ClipWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def _open(self) -> None:  # noqa: B027 (nothing to make by default)
        """Make the temporary output (once the target is claimed)."""

    @abstractmethod
    def _write(self, image: np.ndarray, pts: int | None) -> None:
        """Add one checked frame to the temporary output."""

    def _finish(self) -> None:  # noqa: B027 (nothing to complete by default)
        """Complete the temporary output (flush encoders, close files)."""

    def _close(self) -> None:  # noqa: B027 (nothing open by default)
        """Release open files without completing them."""


class _FolderWriter(ClipWriter):
    """PNG files 00000.png, 00001.png, ... in a new folder."""

    def __init__(self, target: Path, overwrite: bool) -> None:
        super().__init__(target, overwrite)

    def _open(self) -> None:
        self._temporary.mkdir()

    def _write(self, image: np.ndarray, pts: int | None) -> None:
        Image.fromarray(image).save(self._temporary / f"{self.frames_written:05d}.png")


class _ImageWriter(ClipWriter):
    """One image file (PNG, JPEG at quality 95, ...)."""

    def __init__(self, target: Path, overwrite: bool, lossless: bool) -> None:
        super().__init__(target, overwrite)
        suffix = target.suffix.lower()
        self._options = {"lossless": True} if lossless and suffix == ".webp" else IMAGE_SAVE_OPTIONS.get(suffix, {})

    def _write(self, image: np.ndarray, pts: int | None) -> None:
        if self.frames_written:
            raise ValueError(f"{self.target.name} holds one image; a second frame came")
        Image.fromarray(image).save(self._temporary, **self._options)


REAL_TIME = (os.SCHED_FIFO, os.SCHED_RR)


def _real_time_threads() -> set[int]:
    """The ids of this process's threads that run at a real-time scheduling policy."""
    found = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            if os.sched_getscheduler(int(task.name)) in REAL_TIME:
                found.add(int(task.name))
        except (ProcessLookupError, ValueError):  # a thread that ended meanwhile
            continue
    return found


@contextmanager
def _scheduling_kept() -> Iterator[None]:
    """No thread of this process left at a real-time priority by the encoder: SVT-AV1 (libsvtav1), run as
    root, moves the thread that opens it, and with it every thread it starts, to SCHED_FIFO 99 for good,
    which on a busy machine starves everything else of its cores. Threads that were real-time before
    (a host program's) are left alone; the others go back to this thread's policy from before."""
    policy, parameters = os.sched_getscheduler(0), os.sched_getparam(0)
    before = _real_time_threads()
    try:
        yield
    finally:
        for thread in _real_time_threads() - before:
            try:
                os.sched_setscheduler(thread, policy, parameters)
            except ProcessLookupError:
                continue


class _VideoWriter(ClipWriter):
    """A video file: the encoder starts at the first frame (its size), the source's other streams follow
    the frames' timestamps."""

    def __init__(self, target: Path, overwrite: bool, source: ClipInfo, encoding: Encoding) -> None:
        self._source = source
        self._encoding = encoding
        self._time_base = source.time_base or 1 / source.fps
        self._frame_ticks = max(1, round(1 / (source.fps * self._time_base)))
        self._last_pts: int | None = None
        self._container: OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._color = source.color  # what the frames are encoded and tagged with, set with the stream
        self._others: _OtherStreams | None = None
        super().__init__(target, overwrite)

    def _open(self) -> None:
        self._container = av.open(str(self._temporary), "w")

    def _start(self, height: int, width: int) -> None:
        encoding = self._encoding
        pixel_format = encoding.pixel_format
        if encoding.even_420 and (height % 2 or width % 2):
            pixel_format = "yuv444p"
            warnings.warn(
                f"{self.target.name}: {width}x{height} is odd, so {encoding.encoder} stores 4:4:4 colour; some "
                "players (browsers among them) need 4:2:0 and even sizes",
                RemoverWarning,
                stacklevel=4,
            )
        stream = self._container.add_stream(encoding.encoder, rate=self._source.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        stream.codec_context.time_base = self._time_base
        stream.options = encoding.options
        if encoding.codec_tag and self.target.suffix.lower() in (".mp4", ".mov"):
            stream.codec_tag = encoding.codec_tag
        self._color = output_color(self._source.color, av.VideoFormat(pixel_format).is_rgb)
        tag(stream.codec_context, self._color)
        self._stream = stream
        if self._source.kind == "video" and self._source.streams:
            self._others = _OtherStreams(self._source, self._container, self.target.suffix.lower())

    def _timestamp(self, pts: int | None) -> int:
        """`pts`, or the next frame's when None; never at or before the last one (encoders refuse that)."""
        if self._last_pts is None:
            return 0 if pts is None else pts
        return max(self._last_pts + 1, self._last_pts + self._frame_ticks if pts is None else pts)

    def _write(self, image: np.ndarray, pts: int | None) -> None:
        if self._stream is None:
            self._start(*image.shape[:2])
        frame = from_rgb(image, self._color, self._stream.pix_fmt)
        frame.pts = self._last_pts = self._timestamp(pts)
        frame.time_base = self._time_base
        self._container.mux(self._encode(frame))
        if self._others is not None:
            self._others.advance(frame.pts * self._time_base)

    def _encode(self, frame: av.VideoFrame | None) -> list[av.Packet]:
        """The encoder's packets for `frame` (None: flush it); SVT-AV1's threads kept off real-time priority."""
        if self._encoding.encoder != "libsvtav1":
            return self._stream.encode(frame)
        with _scheduling_kept():
            return self._stream.encode(frame)

    def _finish(self) -> None:
        self._container.mux(self._encode(None))
        if self._others is not None:
            self._others.advance(None)
            self._others.close()
        self._container.close()

    def _close(self) -> None:
        if self._others is not None:
            self._others.close()
        if self._container is not None:
            self._container.close()


class _OtherStreams:
    """The source's streams besides its video, demuxed again from the source file and muxed into the
    output in timestamp order as the video advances (the muxer interleaves what is close in time).

    Each is copied packet for packet when the output container holds its codec; audio it cannot hold
    is re-encoded to the container's usual codec; anything else is dropped. Data and attachment
    streams have no codec FFmpeg can ask about: they are copied only into the source's own container
    type. Re-encoding and dropping each warn, naming the stream."""

    def __init__(self, source: ClipInfo, output: OutputContainer, suffix: str) -> None:
        self._input = av.open(str(source.path))
        self._output = output
        self._copies: dict[int, av.stream.Stream] = {}  # input stream index -> output stream
        self._encoders: dict[int, av.audio.stream.AudioStream] = {}  # input stream index -> re-encoding stream
        supported = output.supported_codecs
        for info in source.streams:
            stream = self._input.streams[info.index]
            if info.type in ("data", "attachment"):
                holds = source.path.suffix.lower() == suffix
            else:
                holds = info.codec in supported
            if holds:
                self._copies[info.index] = output.add_stream_from_template(stream)
            elif info.type == "audio" and stream.codec_context is not None:  # None: no decoder here
                self._encoders[info.index] = self._audio_encoder(stream, AUDIO_FALLBACK[suffix])
                _warn(info, f"{suffix} cannot hold {info.codec}: re-encoding it to {AUDIO_FALLBACK[suffix]}")
            elif info.type in ("data", "attachment"):
                _warn(info, f"dropped: only a {source.path.suffix} output keeps a {info.type} stream")
            else:
                _warn(info, f"dropped: {suffix} cannot hold {info.codec}")
        selected = [self._input.streams[index] for index in (*self._copies, *self._encoders)]
        self._packets = self._input.demux(selected) if selected else iter(())
        self._waiting: av.Packet | None = None  # read, but later than the video so far

    def _audio_encoder(self, stream: av.audio.stream.AudioStream, codec: str) -> av.audio.stream.AudioStream:
        rates = av.Codec(codec, "w").audio_rates
        rate = stream.codec_context.sample_rate
        if rates and rate not in rates:
            rate = max(rates)
        encoder = self._output.add_stream(codec, rate=rate)
        encoder.layout = stream.codec_context.layout
        return encoder

    def advance(self, until: Fraction | None) -> None:
        """Mux every packet up to time `until` (seconds; None: to the end)."""
        while True:
            packet = self._waiting or next(self._packets, None)
            if packet is None:
                return
            time = packet.dts if packet.dts is not None else packet.pts
            if until is not None and time is not None and time * packet.time_base > until:
                self._waiting = packet
                return
            self._waiting = None
            self._mux(packet)

    def _mux(self, packet: av.Packet) -> None:
        index = packet.stream.index
        if index in self._encoders:  # an empty packet at the end flushes the decoder, then the encoder
            encoder = self._encoders[index]
            for frame in packet.decode():
                self._output.mux(encoder.encode(frame))
            if not packet.size:
                self._output.mux(encoder.encode())
        elif packet.size:
            packet.stream = self._copies[index]
            self._output.mux(packet)

    def close(self) -> None:
        self._input.close()


def _warn(stream: StreamInfo, what: str) -> None:
    warnings.warn(f"{stream.description} (stream {stream.index}): {what}", RemoverWarning, stacklevel=5)


def open_writer(
    path: str | Path,
    source: ClipInfo,
    *,
    overwrite: bool = False,
    codec: str | None = None,
    crf: int | None = None,
    lossless: bool = False,
    inputs: Iterable[str | Path] = (),
) -> ClipWriter:
    """A writer of `source`'s processed frames to `path` (see the module's docstring), checked as
    `check_output` does (`inputs`: the other files the run reads, the mask)."""
    path = Path(path)
    kind, encoding = _plan(path, source, _Options(overwrite, codec, crf, lossless, tuple(Path(p) for p in inputs)))
    remove_stale_partials(path)
    try:
        if kind == "video":
            return _VideoWriter(path, overwrite, source, encoding)
        if kind == "folder":
            writer: ClipWriter = _FolderWriter(path, overwrite)
        else:
            writer = _ImageWriter(path, overwrite, lossless)
    except OSError as exc:
        raise RemoverError(f"cannot write {path}: {exc.strerror or exc}") from None
    for stream in source.streams:
        _warn(stream, f"dropped: {'a folder of PNGs' if kind == 'folder' else 'an image file'} holds only frames")
    return writer


def write_clip(path: str | Path, frames: np.ndarray, fps: Fraction) -> None:
    """Write uint8 frames [F, H, W, 3] (from memory: sRGB, no timestamps) to a video, a folder of PNGs
    or, for one frame, an image file."""
    count, height, width = frames.shape[:3]
    source = ClipInfo(Path(path), "memory", width, height, count, Fraction(fps), None, 0, SRGB)
    with open_writer(path, source) as writer:
        for frame in frames:
            writer.write(frame)
