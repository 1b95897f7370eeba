"""Small clips the IO tests make with PyAV alone (not through runtime.io): colour tags, rotation,
irregular timestamps, audio, subtitles and data streams, more than 8 bits."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

# matrix name -> (AVColorSpace code, swscale matrix, AVColorPrimaries code, AVColorTransferCharacteristic code)
MATRICES = {
    "bt709": (1, Colorspace.ITU709, 1, 1),
    "smpte170m": (6, Colorspace.ITU601, 6, 6),
    "bt2020nc": (9, Colorspace.BT2020, 9, 16),  # with the PQ transfer (SMPTE 2084)
}
BACKGROUND, PATCH = (200, 60, 90), (30, 180, 220)


def patch_frames(count: int, height: int, width: int) -> np.ndarray:
    """uint8 [F, H, W, 3]: a flat background with a flat patch over the middle third."""
    frames = np.empty((count, height, width, 3), np.uint8)
    frames[:] = BACKGROUND
    frames[:, height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = PATCH
    return frames


def gradient_frames(count: int, height: int, width: int) -> np.ndarray:
    """uint8 [F, H, W, 3]: smooth ramps moving from frame to frame (no edges for 4:2:0 to blur)."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([x * 200 // width + 20 + 5 * i, y * 200 // height + 30, (x + y) * 100 // (height + width) + 60], -1)
        for i in range(count)
    ]
    return np.stack(frames).astype(np.uint8)


def patch_colour(image: np.ndarray) -> np.ndarray:
    """The RGB at the centre of the patch, as int."""
    return image[image.shape[0] // 2, image.shape[1] // 2].astype(int)


def encode_video(
    path: Path,
    frames: np.ndarray,
    *,
    fps: Fraction = Fraction(25),
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    encoder: str = "libx264",
    pixel_format: str = "yuv420p",
    matrix: str = "bt709",
    full_range: bool = False,
    tagged: bool = True,
    rotation: int = 0,
    hflip: bool = False,
    audio_seconds: float | None = None,
    subtitles: bool = False,
    data: bool = False,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB frames converted with `matrix` and range (tagged with them, primaries and transfer
    too, when `tagged`), at timestamps `pts` in `time_base` (default 0, 1, ... at `fps`), with a
    display rotation (counter-clockwise) and flip, an aac sine of `audio_seconds`, a mov_text
    subtitle every 5th frame, a data packet each frame."""
    code, sws_matrix, primaries, transfer = MATRICES[matrix]
    colour_range = ColorRange.JPEG if full_range else ColorRange.MPEG
    time_base = time_base or 1 / fps
    with av.open(str(path), "w") as container:
        video = container.add_stream(encoder, rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], pixel_format
        video.codec_context.time_base = time_base
        video.options = {"preset": "ultrafast", "qp": "0"} if options is None else options
        if tagged:
            context = video.codec_context
            context.colorspace, context.color_range = code, colour_range
            context.color_primaries, context.color_trc = primaries, transfer
        if rotation or hflip:
            video.set_display_rotation(rotation, hflip=hflip)
        subtitle = container.add_mux_stream("mov_text") if subtitles else None
        data_stream = container.add_data_stream("bin_data") if data else None
        audio = None
        if audio_seconds:
            audio = container.add_stream("aac", rate=48000)
            audio.layout = "stereo"
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
                format=pixel_format, dst_colorspace=sws_matrix, dst_color_range=colour_range
            )
            frame.pts, frame.time_base = (pts[index] if pts else index * round(1 / (fps * time_base))), time_base
            container.mux(video.encode(frame))
            seconds = frame.pts * time_base
            if subtitle is not None and index % 5 == 0:
                _mux_packet(container, subtitle, b"\x00\x05hello", seconds)
            if data_stream is not None:
                _mux_packet(container, data_stream, b"data", seconds)
        container.mux(video.encode())
        if audio is not None:
            _encode_sine(container, audio, audio_seconds)
    return path


def _mux_packet(container: av.container.OutputContainer, stream: av.stream.Stream, payload: bytes, at: Fraction):
    packet = av.Packet(payload)
    packet.stream, packet.time_base = stream, Fraction(1, 1000)
    packet.pts = packet.dts = round(at * 1000)
    packet.duration = 40
    container.mux(packet)


def _encode_sine(container: av.container.OutputContainer, audio: av.audio.stream.AudioStream, seconds: float):
    samples = round(48000 * seconds)
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)
    for start in range(0, samples, 1024):
        chunk = wave[start : start + 1024]
        frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, start, Fraction(1, 48000)
        container.mux(audio.encode(frame))
    container.mux(audio.encode())


def stream_span(path: Path, kind: str) -> tuple[int, Fraction, Fraction]:
    """(packets, first pts, last pts + duration) in seconds of the first `kind` stream of a file."""
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.type == kind)
        packets = [(p.pts, p.duration) for p in container.demux(stream) if p.size]
        time_base = Fraction(stream.time_base)
    first = min(pts for pts, _ in packets) * time_base
    return len(packets), first, max(pts + duration for pts, duration in packets) * time_base


def stream_codecs(path: Path) -> list[tuple[str, str]]:
    """(type, codec) of each stream of a file."""
    with av.open(str(path)) as container:
        return [(s.type, s.codec_context.name if s.codec_context else s.name) for s in container.streams]
