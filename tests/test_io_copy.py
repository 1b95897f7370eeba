"""runtime.io.copy_clip (an empty mask's output): the frames read back are the input's, bit for bit,
by a stream copy where the container holds the streams and a lossless encode where it does not."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from media import encode_video, gradient_frames, stream_codecs

from runtime.errors import RemoverWarning
from runtime.io import copy_clip, open_clip, read_clip, write_clip

LOSSY = {"preset": "ultrafast", "crf": "35"}  # a visibly lossy source: re-encoding it would change it


def decoded(path) -> tuple[np.ndarray, list[float]]:
    """The frames and their times from the first, in seconds, as our reader shows them."""
    with open_clip(path) as reader:
        frames = list(reader)
        seconds = [float((frame.pts - frames[0].pts) * reader.info.time_base) for frame in frames]
    return np.stack([frame.image for frame in frames]), seconds


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov"])
def test_a_lossy_video_is_stream_copied_with_its_audio(tmp_path, suffix):
    source = encode_video(tmp_path / "in.mp4", gradient_frames(6, 64, 96), options=LOSSY, audio_seconds=6 / 25)
    assert copy_clip(source, tmp_path / f"out{suffix}", progress=False) == "stream copy"
    (frames_in, pts_in), (frames_out, pts_out) = decoded(source), decoded(tmp_path / f"out{suffix}")
    np.testing.assert_array_equal(frames_out, frames_in)
    np.testing.assert_allclose(pts_out, pts_in, atol=1e-3)  # Matroska keeps milliseconds
    assert open_clip(tmp_path / f"out{suffix}").info.color == open_clip(source).info.color
    assert [kind for kind, _ in stream_codecs(tmp_path / f"out{suffix}")] == ["video", "audio"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", f"out{suffix}"]


@pytest.mark.parametrize(
    ("source_kind", "out", "options"),
    [
        ("video", "out.mkv", {"codec": "vp9"}),  # another codec asked for: VP9's lossless mode
        ("rotated", "out.mp4", {}),  # written upright, so encoded (losslessly) rather than copied
        ("frames", "out.mp4", {"crf": 30}),  # images: no stream to copy; crf gives way to lossless
        ("video", "frames", {}),  # PNG frames
    ],
)
def test_what_cannot_be_copied_is_written_losslessly(tmp_path, source_kind, out, options):
    frames = gradient_frames(5, 64, 96)
    if source_kind == "frames":
        source = tmp_path / "in"
        write_clip(source, frames, fps=25)
    else:
        rotation = 90 if source_kind == "rotated" else 0
        source = encode_video(tmp_path / "in.mp4", frames, options=LOSSY, rotation=rotation)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RemoverWarning)
        assert copy_clip(source, tmp_path / out, progress=False, **options) == "lossless re-encode"
    np.testing.assert_array_equal(read_clip(tmp_path / out).frames, read_clip(source).frames)


def test_a_codec_without_a_lossless_mode_warns(tmp_path):
    source = encode_video(tmp_path / "in.mp4", gradient_frames(5, 64, 96), options=LOSSY)
    with pytest.warns(RemoverWarning, match="may differ slightly"):
        assert copy_clip(source, tmp_path / "out.mkv", codec="h265", progress=False) == "re-encode"
