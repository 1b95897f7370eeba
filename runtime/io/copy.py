"""Writing a clip unchanged (an empty mask: nothing to remove), so that its frames read back exactly as
the input's, with no model and no lossy re-encode.

A video whose codec and other streams the output container holds is copied packet for packet (its
pictures, timestamps, colour tags, audio and subtitles untouched), unless another codec is asked for
or the video has a rotation tag (the output is written upright). Anything else is written frame by
frame through the lossless encoding of the chosen codec (`open_writer(..., lossless=True)`); a codec
without a lossless mode is honoured with a warning that the frames may differ slightly. Either way the
output is committed as `open_writer` commits it: a temporary name, no replacing without `overwrite`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import av
from tqdm.auto import tqdm

from runtime.errors import RemoverError, RemoverWarning
from runtime.io.images import JPEG_SUFFIXES
from runtime.io.outputs import publish, remove_path, temporary_name
from runtime.io.reader import ClipInfo, open_clip
from runtime.io.writer import CODECS, CONTAINER_CODECS, check_output, open_writer

DECODER_NAMES = {"h264": "h264", "h265": "hevc", "vp9": "vp9", "av1": "av1", "ffv1": "ffv1", "prores": "prores"}


def _may_copy(info: ClipInfo, out: Path, codec: str | None) -> bool:
    """Whether a stream copy of `info` into `out` keeps what the reader shows, with the `codec` asked for."""
    if info.kind != "video" or out.suffix.lower() not in CONTAINER_CODECS or info.rotation or info.mirrored:
        return False  # the output is written upright, with no rotation tag
    if any(stream.type in ("data", "attachment") for stream in info.streams):
        return info.path.suffix.lower() == out.suffix.lower()  # only their own container type holds them
    return True


def _stream_copy(info: ClipInfo, out: Path, codec: str | None, overwrite: bool, progress: bool) -> bool:
    """Remux every stream of `info.path` into `out` through a temporary name; False (nothing written)
    when the container cannot hold them all or the video is not in the `codec` asked for."""
    temporary = temporary_name(out)
    try:
        with av.open(str(info.path)) as source, av.open(str(temporary), "w") as target:
            video = source.streams.video[0]
            kept = [stream for stream in source.streams if stream.type in ("video", "audio", "subtitle")]
            if codec is not None and DECODER_NAMES.get(codec) != video.codec_context.name:
                return False
            if not all(stream.codec_context.name in target.supported_codecs for stream in kept):
                return False
            streams = {stream.index: target.add_stream_from_template(stream) for stream in source.streams}
            with tqdm(total=info.frame_count, desc="copy", leave=False, disable=not progress) as bar:
                for packet in source.demux():
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    if packet.stream is video:
                        bar.update()
                    packet.stream = streams[packet.stream.index]
                    target.mux(packet)
        publish(temporary, out, overwrite)
        return True
    except OSError as exc:
        raise RemoverError(f"cannot write {out}: {exc.strerror or exc}; nothing was kept") from None
    finally:
        remove_path(temporary)  # gone already when published


def copy_clip(
    video: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    codec: str | None = None,
    crf: int | None = None,
    lossless: bool = False,
    inputs: Iterable[str | Path] = (),
    progress: bool = True,
) -> str:
    """Write the clip `video` to `out` unchanged (see the module's docstring), checked as
    `check_output` checks (`inputs`: the mask, never to be written over). Returns how: "stream copy"
    or "lossless re-encode" (or "re-encode" for a codec without a lossless mode)."""
    video, out = Path(video), Path(out)
    with open_clip(video) as reader:
        info = reader.info
        check_output(out, info, overwrite=overwrite, codec=codec, crf=crf, lossless=lossless, inputs=inputs)
        if _may_copy(info, out, codec) and _stream_copy(info, out, codec, overwrite, progress):
            return "stream copy"
        suffix = out.suffix.lower()
        if suffix in CONTAINER_CODECS:
            chosen = codec or CONTAINER_CODECS[suffix][0]
            exact = CODECS[chosen].lossless is not None
            options = {"codec": chosen, "lossless": True} if exact else {"codec": codec, "crf": crf}
        else:  # PNG frames or one image: lossless, except in a JPEG
            exact = suffix not in JPEG_SUFFIXES
            options = {"lossless": exact}
        if not exact:
            warnings.warn(
                f"{out.name}: the unchanged input is re-encoded without a lossless mode and may differ slightly",
                RemoverWarning,
                stacklevel=2,
            )
        with open_writer(out, info, overwrite=overwrite, inputs=inputs, **options) as writer:
            for frame in tqdm(reader, total=info.frame_count, desc="copy", leave=False, disable=not progress):
                writer.write(frame.image, frame.pts)
    return "lossless re-encode" if exact else "re-encode"
